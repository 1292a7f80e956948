"""GRPO's reward over HTTP (``reward.remote_url``): the remote scorer against a live reward service
equals the local Ray pool, and a tiny GRPO run whose endpoint is down or slow stops within
``reward.timeout_s`` with an error naming the URL, having written nothing as if scored."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ray

from awares_rl.config import load_recipe
from awares_rl.core.episode import Episode
from awares_rl.grpo import GRPOTrainer
from reward.client import RewardClientError
from reward.config import RewardConfig
from reward.http import create_app, server_config
from reward.remote import RemoteScorer, make_scorer
from reward.service import RewardPool, RewardService
from tests.conftest import start_server

TOKEN = "remote-test-token-0123456789"
RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"
CFG = RewardConfig(judge="exact_match", metric_judges={"anls": "anls"}, batch_size=2)


def episodes() -> list[Episode]:
    """Five episodes that exercise every reward part: answers right, near and wrong, crops taken
    when needed or not, no answer, a malformed call."""
    eps = [
        Episode("a", "q", ["blue"], "exact", (8, 8), needs_high_res=False, final_answer="blue"),
        Episode("b", "q", ["hello"], "anls", (8, 8), needs_high_res=True, final_answer="helo", crop_ids=[0, 4]),
        Episode("c", "q", ["red"], "exact", (8, 8), needs_high_res=True, final_answer="blue"),
        Episode("d", "q", ["x"], "exact", (8, 8), needs_high_res=True),
        Episode("e", "q", ["x"], "exact", (8, 8), invalid_tool_call="out-of-range"),
    ]
    return eps


class CountingService(RewardService):
    """The real in-process service, counting the requests it scores."""

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__(cfg)
        self.batches: list[int] = []

    def score(self, items):
        self.batches.append(len(items))
        return super().score(items)


def test_remote_scorer_equals_local_pool(ray_session, monkeypatch):
    service = CountingService(CFG)
    server, thread, url = start_server(server_config(create_app(service, TOKEN, CFG), CFG, "127.0.0.1", 0,
                                                     log_level="warning"))
    try:
        monkeypatch.setenv(CFG.token_env, TOKEN)  # the variable `awares-rl serve-reward` reads
        remote = make_scorer(replace(CFG, remote_url=url))
        assert isinstance(remote, RemoteScorer)
        pool = make_scorer(CFG)
        assert isinstance(pool, RewardPool)
        over_http, local = episodes(), episodes()
        parts = remote.score_episodes(over_http)
        assert parts == pool.score_episodes(local) == [ep.reward for ep in local]
        assert [ep.reward for ep in over_http] == parts
        assert [p.total for p in parts] == pytest.approx([1.0, 0.8 - 0.15, -0.5, -0.5, -0.5])
        assert service.batches == [2, 2, 1]  # reward.batch_size items a request
        remote.shutdown()
        pool.shutdown()
        monkeypatch.setenv(CFG.token_env, "wrong")
        with pytest.raises(RewardClientError, match="403"):
            make_scorer(replace(CFG, remote_url=url)).score_episodes(episodes())
    finally:
        server.should_exit = True
        thread.join(10)


class SlowReward(ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 whose /health answers at once and whose /score sleeps."""

    daemon_threads = True

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.hits = delay_s, []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

            def do_GET(self) -> None:
                self._send({"status": "ok"})

            def do_POST(inner) -> None:
                self.hits.append(time.monotonic())
                inner.rfile.read(int(inner.headers["Content-Length"]))
                time.sleep(self.delay_s)
                inner._send({"results": []})

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("endpoint", ["down", "slow"])
def test_grpo_stops_when_the_reward_endpoint_fails(endpoint, tmp_path, tool_model_dir, monkeypatch):
    slow = SlowReward(delay_s=3.0) if endpoint == "slow" else None
    url = slow.url if slow else closed_port_url()
    monkeypatch.setenv("AWARES_REWARD_TOKEN", TOKEN)
    cfg = load_recipe(RECIPE, [
        f"run.out_dir={tmp_path}", "run.name=r", "data.n_train=4", "rollout.backend=hf", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.save_every=1",
        "grpo.kl_coef=0", "grpo.mini_batches=1", "learner.backend=torch", "learner.use_ray=false",
        "logging.wandb=false", f"reward.remote_url={url}", "reward.remote_request_timeout_s=0.5",
        "reward.remote_retries=2", "reward.remote_backoff_s=0.05", "reward.timeout_s=5",
    ])
    try:
        with pytest.raises(RewardClientError) as e:
            GRPOTrainer(cfg, start_model=tool_model_dir).fit()
        stopped = time.monotonic()
    finally:
        ray.shutdown()
        if slow:
            slow.shutdown()
    assert url in str(e.value)
    if slow:  # the health check passed; step 1's request was tried 1 + 2 times, within timeout_s
        assert "did not answer in time (3 attempt(s)" in str(e.value)
        assert len(slow.hits) == 3 and stopped - slow.hits[0] < cfg.reward.timeout_s
    else:
        assert "unreachable after 3 attempt(s)" in str(e.value)
    metrics = cfg.run.dir / "grpo" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no step was logged as if scored
    assert not list((cfg.run.dir / "checkpoints").glob("grpo/step_*"))
    assert not (cfg.run.dir / "models" / "grpo").exists()


def test_remote_url_is_validated():
    with pytest.raises(ValueError, match=r"reward.remote_url='127.0.0.1:8008': must be an http\(s\) base URL"):
        RewardConfig(remote_url="127.0.0.1:8008")
    with pytest.raises(ValueError, match="reward.timeout_s"):
        RewardConfig(timeout_s=0)
