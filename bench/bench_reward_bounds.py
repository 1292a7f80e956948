"""Reward-service bounds benchmark (issue #12): exact-match latency while a slow judge drips.

    .venv/bin/python bench/bench_reward_bounds.py [--seconds 8] [--deadline 10] [--drip 1.0]

A real OpenAI-compatible judge endpoint (tests/test_reward_bounds.py ``DripServer``) answers
every chat completion one byte per ``--drip`` seconds. ``awares-rl serve-reward --local`` runs in
a subprocess with exact_match as its judge and llm_judge for metric "semantic" at that endpoint
(``reward.llm_deadline_s = --deadline``). ``--concurrency`` client threads send exact-match
requests (``--items`` answers each) for ``--seconds``, first with no judge request in flight
(baseline), then while one "semantic" request is stuck in the dripping judge. Reports p50 / p99 /
max latency of each phase, and when (and how) the slow request failed against its deadline.
Writes ``--out`` (bench/results/reward_bounds.json) with the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.test_reward_bounds.DripServer

from tests.test_reward_bounds import DripServer  # noqa: E402

FAST_ITEM = {"prediction": "blue", "references": ["blue"]}
SLOW_ITEM = {"prediction": "blue", "references": ["blue"], "metric": "semantic"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def start_service(judge_url: str, token: str, deadline_s: float) -> tuple[subprocess.Popen, str]:
    """``awares-rl serve-reward --local`` on a free port, waited for until /health answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "awares_rl.cli", "serve-reward", "--local", "--port", str(port)]
    cmd += [
        "reward.judge=exact_match",
        "reward.metric_judges={semantic: llm_judge}",
        f"reward.llm_base_url={judge_url}",
        "reward.llm_model=judge",
        "reward.llm_api_key_env=null",
        "reward.llm_max_retries=0",
        f"reward.llm_deadline_s={deadline_s}",
    ]
    log = tempfile.NamedTemporaryFile("w+", prefix="reward-bounds-", suffix=".log", delete=False)
    env = {**os.environ, "AWARES_REWARD_TOKEN": token}
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if server.poll() is not None:
            raise RuntimeError(f"reward server exited; see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"reward server did not answer /health within 60 s; see {log.name}")


def load(url: str, token: str, concurrency: int, items: int, seconds: float) -> dict:
    """``concurrency`` threads posting exact-match requests for ``seconds``: latency summary."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    body = {"items": [FAST_ITEM] * items}
    stop_at = time.monotonic() + seconds

    def client() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                ok = http.post("/score", json=body).status_code == 200
                seconds_taken = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(seconds_taken)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "p50_ms": round(1000 * _pct(latencies, 0.5), 2),
        "p99_ms": round(1000 * _pct(latencies, 0.99), 2),
        "max_ms": round(1000 * max(latencies, default=float("nan")), 2),
    }


def slow_request(url: str, token: str, out: dict) -> None:
    """One llm_judge request (it lands in the dripping endpoint); fills ``out`` when it ends."""
    t0 = time.perf_counter()
    r = httpx.post(
        f"{url}/score",
        json={"items": [SLOW_ITEM]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    )
    out.update(status=r.status_code, seconds=round(time.perf_counter() - t0, 3))
    out.update(ended_at=time.monotonic(), detail=r.json().get("detail", "")[:300])


def run(args: argparse.Namespace, drip: DripServer) -> dict:
    token = secrets.token_urlsafe(16)
    server, url = start_service(drip.url, token, args.deadline)
    try:
        load(url, token, args.concurrency, args.items, 1.0)  # warm-up
        baseline = load(url, token, args.concurrency, args.items, args.seconds)
        slow: dict = {}
        slow_thread = threading.Thread(target=slow_request, args=(url, token, slow))
        slow_thread.start()
        while drip.requests == 0 and slow_thread.is_alive():
            time.sleep(0.01)
        during = load(url, token, args.concurrency, args.items, args.seconds)
        load_ended = time.monotonic()
        slow_thread.join(args.deadline + 60)
    finally:
        server.terminate()
        server.wait(30)
    during["slow_request_in_flight_throughout"] = slow.get("ended_at", 0.0) > load_ended
    slow.pop("ended_at", None)
    slow.update(deadline_s=args.deadline, overshoot_s=round(slow["seconds"] - args.deadline, 3))
    return {"baseline": baseline, "while_judge_drips": during, "slow_request": slow}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--concurrency", type=int, default=4, help="exact-match client threads")
    ap.add_argument("--items", type=int, default=8, help="answers per exact-match request")
    ap.add_argument("--seconds", type=float, default=8.0, help="load duration of each phase")
    ap.add_argument("--deadline", type=float, default=10.0, help="reward.llm_deadline_s")
    ap.add_argument("--drip", type=float, default=1.0, help="seconds between judge reply bytes")
    ap.add_argument("--out", default=str(ROOT / "bench/results/reward_bounds.json"))
    args = ap.parse_args()
    if args.seconds >= args.deadline:
        ap.error("--seconds must be below --deadline (the slow request must outlast the load)")
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_start": os.getloadavg(),
        },
        "settings": {**vars(args), "out": os.path.relpath(args.out, ROOT)}  # no machine paths in the results
    }
    with DripServer(interval_s=args.drip) as drip:
        results |= run(args, drip)
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    during = results["while_judge_drips"]
    results["target_p99_under_100ms"] = during["p99_ms"] < 100 and during["errors"] == 0
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
