"""The reward service: OpenRLHF parsing, a real HTTP server (auth, 413, 422, 504), the client,
and the Ray actor pool on a real local Ray session."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from awares_rl.core.episode import Episode, RewardParts
from reward.client import RewardClient, RewardClientError
from reward.config import RewardConfig
from reward.http import create_app, resolve_token
from reward.openrlhf import parse_label, parse_response, response_turns
from reward.scoring import NO_ANSWER, RewardRequest
from reward.service import RewardPool, RewardService
from tests.conftest import start_server

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CFG = RewardConfig(judge="exact_match", max_body_bytes=64 * 1024, request_timeout_s=10.0)

PROMPT = (
    "<|im_start|>system\nYou see a low-resolution view.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>What is the code?<|im_end|>\n<|im_start|>assistant\n"
)
# The decoded conversation has the image pads expanded, so it does not start with PROMPT.
EXPANDED = PROMPT.replace("<|image_pad|>", "<|image_pad|>" * 4)
CROPS_TURN = (
    "<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
    "Here are the requested crops.<|im_end|>\n<|im_start|>assistant\n"
)
TOOL_QUERY = EXPANDED + "GET_CROPS: ['0','4']" + CROPS_TURN + "417<|im_end|>"
DIRECT_QUERY = PROMPT + "blue<|im_end|><|endoftext|>"
INVALID_QUERY = PROMPT + "GET_CROPS: ['9']<|im_end|>"


def test_response_turns_and_parse():
    assert response_turns(TOOL_QUERY, PROMPT) == ["GET_CROPS: ['0','4']", "417"]
    assert parse_response(response_turns(TOOL_QUERY, PROMPT)) == ("417", [0, 4], None)
    assert parse_response(response_turns(DIRECT_QUERY, PROMPT)) == ("blue", [], None)
    assert parse_response(response_turns(INVALID_QUERY, PROMPT)) == (None, [], "out-of-range")
    assert parse_response(response_turns(PROMPT + "GET_CROPS: ['1']", PROMPT)) == (None, [1], None)
    second_call = EXPANDED + "GET_CROPS: ['0']" + CROPS_TURN + "GET_CROPS: ['4']<|im_end|>"
    assert parse_response(response_turns(second_call, PROMPT)) == (None, [0], "second-call")
    assert response_turns("Q: what? A: 42", "Q: what? A:") == ["42"]  # no chat markup
    assert response_turns(TOOL_QUERY, None) == ["GET_CROPS: ['0','4']", "417"]


def test_parse_label():
    assert parse_label("417") == (["417"], None, None)
    assert parse_label('["a", "b"]') == (["a", "b"], None, None)
    assert parse_label('{"answers": ["7"], "metric": "anls", "needs_high_res": true}') == (
        ["7"],
        "anls",
        True,
    )
    assert parse_label({"answer": "7"}) == (["7"], None, None)
    assert parse_label(42) == (["42"], None, None)
    assert parse_label("[not json") == (["[not json"], None, None)
    with pytest.raises(ValueError, match=r"labels\[3\] must be"):
        parse_label({"answers": []}, where="labels[3]")


class SlowService(RewardService):
    def score(self, items):
        time.sleep(1.0)
        return super().score(items)


@pytest.fixture(scope="module")
def serve_app():
    """Start real uvicorn servers on free loopback ports; yields a function app -> base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app) -> str:
        server, thread, url = start_server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        servers.append((server, thread))
        return url

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def url(serve_app) -> str:
    return serve_app(create_app(RewardService(CFG), TOKEN, CFG))


ITEMS = [
    # 1 - (0.05 + 0.05 * 2) = 0.85
    {"prediction": "yes", "references": ["yes"], "needs_high_res": True, "crop_ids": [0, 5]},
    # no answer, needed crop missed: 0 - 0.5 = -0.5
    {"prediction": None, "references": ["x"], "needs_high_res": True},
    # malformed call: 0 - 0 - 0.5 = -0.5
    {"prediction": None, "references": ["x"], "invalid_tool_call": "junk"},
]


def test_health_needs_no_token(url):
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_score(url):
    r = httpx.post(f"{url}/score", json={"items": ITEMS}, headers=AUTH)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["total"] for x in results] == pytest.approx([0.85, -0.5, -0.5])
    assert results[0] == {
        "answer": 1.0,
        "crop_cost": pytest.approx(0.15),
        "format": 0.0,
        "total": pytest.approx(0.85),
        "judge": "exact_match",
    }
    assert results[1]["judge"] == NO_ANSWER and results[2]["format"] == -0.5


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Basic abc"}, 401), ({"Authorization": "Bearer nope"}, 403)],
)
def test_auth_refused(url, headers, status):
    for path in ("/score", "/openrlhf"):
        r = httpx.post(f"{url}{path}", json={"items": ITEMS}, headers=headers)
        assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_oversized_bodies_get_413(url):
    big = {"items": [{"prediction": "x" * 1000, "references": ["y"]}] * 100}  # ~100 KB > 64 KiB
    assert httpx.post(f"{url}/score", json=big, headers=AUTH).status_code == 413

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to check up front
        yield b'{"items": ['
        for _ in range(100):
            yield b'{"prediction": "' + b"x" * 1000 + b'", "references": ["y"]},'
        yield b"]}"

    headers = {**AUTH, "Content-Type": "application/json"}
    assert httpx.post(f"{url}/score", content=chunks(), headers=headers).status_code == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON"),
        ({"items": []}, "items"),
        ({"items": [{"prediction": "a", "references": []}]}, "items.0.references"),
        ({"items": [{"prediction": "a", "references": ["a"], "crop_ids": [9]}]}, "crop_ids"),
        (
            {"items": [{"prediction": "a", "references": ["a"], "needs_high_res": "yes"}]},
            "needs_high_res",
        ),
        ({"items": [{"prediction": "a", "references": ["a"], "bonus": 1}]}, "bonus"),
        ({"items": [{"references": ["a"]}]}, "prediction"),
    ],
)
def test_malformed_requests_get_422(url, body, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{url}/score", headers={**AUTH, "Content-Type": "application/json"}, **kwargs)
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json()["detail"])


def test_openrlhf_contract(url):
    body = {
        "query": [TOOL_QUERY, DIRECT_QUERY, INVALID_QUERY],
        "prompts": [PROMPT] * 3,
        "labels": ['{"answers": ["417"], "needs_high_res": true}', "blue", {"answers": ["x"]}],
    }
    r = httpx.post(f"{url}/openrlhf", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"rewards", "scores", "extra_logs"}
    # 1 - 0.15 ; 1 - 0 ; 0 - 0 - 0.5
    assert out["rewards"] == pytest.approx([0.85, 1.0, -0.5])
    assert out["scores"] == [1.0, 1.0, 0.0]
    assert out["extra_logs"]["num_crops"] == [2.0, 0.0, 0.0]
    assert out["extra_logs"]["invalid_tool_call"] == [0.0, 0.0, 1.0]
    assert all(len(v) == 3 for v in out["extra_logs"].values())
    bad = {"query": [TOOL_QUERY], "prompts": [PROMPT, PROMPT], "labels": ["1"]}
    r = httpx.post(f"{url}/openrlhf", json=bad, headers=AUTH)
    assert r.status_code == 422 and "same length" in r.text
    r = httpx.post(f"{url}/openrlhf", json={"query": ["a"], "labels": [{"x": 1}]}, headers=AUTH)
    assert r.status_code == 422 and "labels[0]" in r.text


def test_openrlhf_reward_func_file(url, monkeypatch):
    """OpenRLHF loads ``reward_func`` from a file path (``--remote_rm_url x.py``) and calls it."""
    import importlib.util

    import reward.openrlhf_func

    spec = importlib.util.spec_from_file_location("reward_func", reward.openrlhf_func.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("AWARES_REWARD_URL", url)
    monkeypatch.setenv("AWARES_REWARD_TOKEN", TOKEN)
    out = module.reward_func(
        [TOOL_QUERY], [PROMPT], ['{"answers": ["417"], "needs_high_res": true}']
    )
    assert out["rewards"].tolist() == pytest.approx([0.85]) and out["scores"].tolist() == [1.0]
    assert out["extra_logs"]["crop_cost"].tolist() == pytest.approx([0.15])


def test_slow_scoring_gets_504(serve_app):
    cfg = RewardConfig(judge="exact_match", request_timeout_s=0.2)
    slow_url = serve_app(create_app(SlowService(cfg), TOKEN, cfg))
    r = httpx.post(f"{slow_url}/score", json={"items": ITEMS[:1]}, headers=AUTH, timeout=5)
    assert r.status_code == 504 and "request_timeout_s" in r.text


def test_client(url):
    with RewardClient(url, token=TOKEN, backoff_s=0.01) as client:
        assert client.health() == {"status": "ok"}
        parts = client.score(
            [RewardRequest("yes", ["yes"], needs_high_res=True, crop_ids=[0, 5]), ITEMS[1]]
        )
        assert [p.total for p in parts] == pytest.approx([0.85, -0.5])
        ep = Episode("s", "q", ["blue"], "exact", (8, 8), final_answer="blue")
        assert (
            client.score_episodes([ep])[0]
            == ep.reward
            == RewardParts(1.0, 0.0, 0.0, 1.0, "exact_match")
        )
        out = client.openrlhf([DIRECT_QUERY], [PROMPT], ["blue"])
        assert out["rewards"] == [1.0]
    with (
        RewardClient(url, token="wrong", backoff_s=0.01) as client,
        pytest.raises(RewardClientError) as e,
    ):
        client.score(ITEMS)
    assert e.value.status == 403 and "token" in str(e.value)


def test_client_unreachable_is_bounded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with RewardClient(f"http://127.0.0.1:{port}", token=TOKEN, max_retries=2, backoff_s=0.01) as c:
        with pytest.raises(RewardClientError, match="unreachable after 3 attempt"):
            c.health()
    assert time.monotonic() - start < 3


def test_serve_refuses_without_token(monkeypatch):
    monkeypatch.delenv("AWARES_REWARD_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="AWARES_REWARD_TOKEN"):
        resolve_token(RewardConfig())
    monkeypatch.setenv("AWARES_REWARD_TOKEN", " s3cret ")
    assert resolve_token(RewardConfig()) == "s3cret"
    with pytest.raises(ValueError, match="token"):
        create_app(RewardService(CFG), "", CFG)


def test_cli_config_and_refusal(tmp_path, monkeypatch, capsys):
    from awares_rl.cli import main
    from awares_rl.commands.serve_reward import load_reward_config
    from awares_rl.core.config_io import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward:\n  judge: anls\n  num_workers: 2\n")
    cfg = load_reward_config(
        str(recipe), ["reward.lam=0.1", "metric_judges={semantic: exact_match}"]
    )
    assert (cfg.judge, cfg.num_workers, cfg.lam) == ("anls", 2, 0.1)
    assert cfg.metric_judges == {"semantic": "exact_match"}
    with pytest.raises(ConfigError, match="reward.bogus"):
        load_reward_config(None, ["reward.bogus=1"])
    monkeypatch.delenv("AWARES_REWARD_TOKEN", raising=False)
    assert main(["serve-reward", "--local"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_ray_pool_fans_out_and_keeps_order(ray_session):
    cfg = RewardConfig(
        judge="exact_match", metric_judges={"anls": "anls"}, num_workers=2, batch_size=2
    )
    pool = RewardPool(cfg)
    items = [{"prediction": str(i), "references": [str(i % 3)]} for i in range(7)]
    items.append({"prediction": "helo", "references": ["hello"], "metric": "anls"})  # 1 - 1/5
    parts = pool.score(items)
    assert [p.answer for p in parts] == pytest.approx([1, 1, 1, 0, 0, 0, 0, 0.8])
    assert pool.health()["scored"] == 8
    scored = [s["scored"] for s in ray_session.get([a.health.remote() for a in pool.actors])]
    assert all(n > 0 for n in scored)  # 4 chunks of 2, round-robin over 2 actors
    episodes = [Episode("s", "q", ["a"], "exact", (8, 8), needs_high_res=True, final_answer="a")]
    assert pool.score_episodes(episodes)[0] == episodes[0].reward
    assert episodes[0].reward.total == pytest.approx(0.5)  # 1 - alpha_miss
    with pytest.raises(ValueError, match=r"items\[0\].references"):
        pool.score([{"prediction": "a", "references": "a"}])
    pool.shutdown()


def test_http_over_ray_pool(ray_session, serve_app):
    cfg = RewardConfig(judge="exact_match", num_workers=2)
    pool = RewardPool(cfg)
    pool_url = serve_app(create_app(pool, TOKEN, cfg, max_inflight=cfg.num_workers))
    with RewardClient(pool_url, token=TOKEN) as client:
        parts = client.score(ITEMS)
    assert [p.total for p in parts] == pytest.approx([0.85, -0.5, -0.5])
    pool.shutdown()
