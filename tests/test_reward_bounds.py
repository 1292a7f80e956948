"""The reward service bounds every wait (issue #12): a judge endpoint that drips its reply a byte
at a time fails at ``llm_deadline_s`` and cannot starve exact-match requests, a promised body that
never comes gets 408, connections beyond ``max_connections`` get 503, silent ones are closed.
Real servers on 127.0.0.1 throughout: a dripping OpenAI-compatible endpoint and uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import uvicorn

from reward.config import RewardConfig
from reward.http import create_app, server_config
from reward.judges import exact_match
from reward.llm_judge import LLMJudgeDeadlineError, llm_judge_with_sources
from reward.service import RewardService
from tests.conftest import start_server

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPLY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "yes"}}]}).encode()
FAST_ITEM = {"prediction": "blue", "references": ["blue"]}  # exact_match: answer 1.0
SLOW_ITEM = {"prediction": "blue", "references": ["blue"], "metric": "semantic"}  # llm_judge


class DripServer:
    """A real HTTP server on 127.0.0.1 answering every request with a chat completion whose
    headers come at once and whose body comes one byte per ``interval_s`` (per-read timeouts
    never fire). ``url`` ends in /v1; ``requests`` counts the requests received."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.requests, self.stop = interval_s, 0, threading.Event()
        drip = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                drip.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(REPLY)))
                self.end_headers()
                for i in range(len(REPLY)):
                    if drip.stop.wait(drip.interval_s):
                        return
                    self.wfile.write(REPLY[i : i + 1])
                    self.wfile.flush()

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)


def bounded_cfg(judge_url: str = "http://127.0.0.1:9/v1", **kw: object) -> RewardConfig:
    """exact_match for every sample, llm_judge (at ``judge_url``) for metric "semantic"."""
    base = {
        "judge": "exact_match",
        "metric_judges": {"semantic": "llm_judge"},
        "llm_base_url": judge_url,
        "llm_model": "judge",
        "llm_api_key_env": None,
        "llm_max_retries": 0,
        "request_timeout_s": 10.0,
    }
    return RewardConfig(**(base | kw))  # type: ignore[arg-type]


@pytest.fixture
def drip() -> Iterator[DripServer]:
    with DripServer(interval_s=0.2) as server:  # REPLY takes ~12 s to drip
        yield server


@pytest.fixture
def serve() -> Iterator[Callable[[RewardConfig], str]]:
    """Starts the reward service (server_config's bounds) for a config; yields its base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(cfg: RewardConfig) -> str:
        app = create_app(RewardService(cfg), TOKEN, cfg)
        server, thread, url = start_server(server_config(app, cfg, "127.0.0.1", 0, "warning"))
        running.append((server, thread))
        return url

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


def _raw_request(url: str, head: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(head)
    return sock


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    data, deadline = b"", time.monotonic() + limit_s
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open after {limit_s} s; got {data[:200]!r}")


@pytest.mark.timeout(20)
def test_llm_judge_fails_at_its_deadline(drip):
    kw = {"base_url": drip.url, "model": "judge", "api_key_env": None, "max_retries": 0}
    start = time.monotonic()
    with pytest.raises(LLMJudgeDeadlineError, match=r"deadline_s = 1 s.*POST .*chat/completions"):
        llm_judge_with_sources(["a", "b"], [["a"], ["b"]], timeout_s=5.0, deadline_s=1.0, **kw)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 1.5, elapsed  # the reply drips for ~12 s; 5 s per read never fires
    start = time.monotonic()
    scores, sources = llm_judge_with_sources(
        ["a"], [["b"]], deadline_s=0.5, fallback=exact_match, fallback_name="exact_match", **kw
    )
    assert time.monotonic() - start < 1.0
    assert (scores, sources) == ([0.0], ["exact_match (llm_judge down)"])


@pytest.mark.timeout(30)
def test_exact_match_answers_while_a_slow_judge_drips(drip, serve):
    url = serve(bounded_cfg(drip.url, llm_deadline_s=3.0))
    slow: dict = {}

    def slow_request() -> None:
        start = time.monotonic()
        r = httpx.post(f"{url}/score", json={"items": [SLOW_ITEM]}, headers=AUTH, timeout=15)
        slow.update(status=r.status_code, text=r.text, seconds=time.monotonic() - start)

    slow_thread = threading.Thread(target=slow_request)
    slow_thread.start()
    deadline = time.monotonic() + 5
    while drip.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert drip.requests == 1, "the slow request never reached the judge"
    latencies: list[float] = []

    def fast_client() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=5) as client:
            for _ in range(10):
                start = time.monotonic()
                r = client.post("/score", json={"items": [FAST_ITEM]})
                latencies.append(time.monotonic() - start)
                assert r.status_code == 200 and r.json()["results"][0]["answer"] == 1.0

    clients = [threading.Thread(target=fast_client) for _ in range(4)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(10)
    assert len(latencies) == 40 and max(latencies) < 1.0, sorted(latencies)[-5:]
    assert slow_thread.is_alive(), "the slow request should still be in its judge"
    slow_thread.join(10)
    assert slow["status"] == 502 and "llm_deadline_s" in slow["text"], slow
    assert 3.0 <= slow["seconds"] < 4.5, slow


@pytest.mark.timeout(20)
def test_promised_body_never_sent_gets_408(serve):
    url = serve(bounded_cfg(body_timeout_s=0.5))
    head = (
        f"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    start = time.monotonic()
    with _raw_request(url, head + b'{"items": ') as sock:
        reply = _read_until_closed(sock, limit_s=3.0)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body_timeout_s" in reply
    assert 0.5 <= time.monotonic() - start < 1.5


@pytest.mark.timeout(20)
def test_connections_beyond_the_limit_get_503(serve):
    url = serve(bounded_cfg(max_connections=2, keep_alive_s=5.0))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5):  # one idle connection: room left
        time.sleep(0.2)  # the server registers it on accept
        assert httpx.post(f"{url}/score", json={"items": [FAST_ITEM]}, headers=AUTH).is_success
        with socket.create_connection((host, int(port)), timeout=5):  # the limit is reached
            time.sleep(0.2)
            start = time.monotonic()
            r = httpx.post(f"{url}/score", json={"items": [FAST_ITEM]}, headers=AUTH, timeout=5)
            assert r.status_code == 503 and time.monotonic() - start < 1.0
    time.sleep(0.2)
    assert httpx.post(f"{url}/score", json={"items": [FAST_ITEM]}, headers=AUTH).is_success


@pytest.mark.timeout(20)
def test_silent_connections_are_closed(serve):
    url = serve(bounded_cfg(keep_alive_s=0.5))
    start = time.monotonic()
    with _raw_request(url, b"") as sock:  # connects, never sends a request
        assert _read_until_closed(sock, limit_s=3.0) == b""
    with _raw_request(url, b"POST /score HTTP/1.1\r\nHost: x\r\n") as sock:  # headers never end
        assert _read_until_closed(sock, limit_s=3.0) == b""
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize(
    "bad",
    [{"llm_deadline_s": 0}, {"body_timeout_s": -1.0}, {"keep_alive_s": 0}, {"max_connections": 0}],
)
def test_bounds_are_validated(bad):
    with pytest.raises(ValueError, match=f"reward.{next(iter(bad))}"):
        RewardConfig(**bad)


@pytest.mark.timeout(30)
def test_client_fails_at_its_deadline_against_a_dripping_server(drip):
    from reward.client import RewardClient, RewardClientError

    with RewardClient(drip.url.removesuffix("/v1"), timeout_s=5.0, deadline_s=1.5, max_retries=3) as client:
        t0 = time.monotonic()
        with pytest.raises(RewardClientError, match=r"deadline_s=1.5 s \(waiting for GET /health\)"):
            client.health()  # a byte every 0.2 s: no single read ever waits 5 s
    assert 1.5 <= time.monotonic() - t0 < 3.0 and drip.requests == 1  # not retried
