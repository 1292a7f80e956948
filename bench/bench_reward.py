"""Reward benchmark: judged answers per second per local judge, and HTTP latency / throughput.

    .venv/bin/python bench/bench_reward.py [--n 4096] [--seconds 15] [--out bench/results/reward.json]

1. Local judges, batched (one call per ``batch`` answers):
   every judge but ``llm_judge`` (it needs an endpoint). The embedding judge runs twice:
   ``unique`` (every prediction and reference distinct: the worst case) and
   ``grpo`` (G=8 episodes a prompt share the references and draw their answers from 4
   candidates, as short VQA answers do; each call encodes its distinct strings once).
   Each is run at every ``--threads`` count (1 thread wins when other processes share the cores).
   The other ``--backends`` (reward.embedding_backend: torch-bf16, onnx, onnx-int8) run
   ``unique`` at every thread count too, with ``max_abs_diff_vs_torch``: their worst score gap
   to torch fp32 there.
2. HTTP: ``awares-rl serve-reward`` in a subprocess, ``--local`` (one scorer) and on a Ray pool of
   ``--workers`` 1-CPU actors, loaded from a separate client process on loopback
   (``--concurrency`` threads, ``--items`` GRPO-like answers a request, bounded by ``--seconds``
   and ``--max-requests``): p50 / p99 latency and answers per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import awares_rl  # noqa: F401  (torchvision shim before transformers)

ROOT = Path(__file__).resolve().parents[1]
WORDS = "total revenue invoice number date red blue left panel code label chart year value".split()


def _phrase(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(1, 3))
    return " ".join(words + [str(rng.randint(0, 99999))])


def unique_batch(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    return [_phrase(rng) for _ in range(n)], [[_phrase(rng)] for _ in range(n)]


def grpo_batch(
    n: int, seed: int, group: int = 8, candidates: int = 4
) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    preds, refs = [], []
    for _ in range(n // group):
        ref = _phrase(rng)
        pool = [ref] + [_phrase(rng) for _ in range(candidates - 1)]
        preds += [rng.choice(pool) for _ in range(group)]
        refs += [[ref]] * group
    return preds, refs


def bench_judge(
    name: str, preds: list[str], refs: list[list[str]], batch: int, **kwargs: object
) -> tuple[dict, list[float]]:
    """(timing row, scores) of judge ``name`` called on ``batch`` answers at a time."""
    import functools

    from reward.judges import get_judge

    judge = functools.partial(get_judge(name), **kwargs)
    judge(preds[:batch], refs[:batch])  # warm-up (loads the embedding model)
    scores: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, len(preds), batch):
        scores += judge(preds[i : i + batch], refs[i : i + batch])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    row = {
        "answers": len(preds),
        "seconds": round(seconds, 3),
        "answers_per_s": round(len(preds) / seconds, 1),
        # per second of CPU this process got (all its threads): what one idle core would do,
        # much less sensitive than answers_per_s to other processes sharing the cores
        "answers_per_cpu_s": round(len(preds) / max(cpu_seconds, 1e-9), 1),
    }
    return row, scores


def encodes_per_answer(preds: list[str], refs: list[list[str]], batch: int) -> float:
    """Distinct strings the embedding judge must encode per answer (batch-level dedupe)."""
    distinct = 0
    for i in range(0, len(preds), batch):
        distinct += len(set(preds[i : i + batch]) | {r for rs in refs[i : i + batch] for r in rs})
    return round(distinct / len(preds), 3)


def local_judges(n: int, batch: int, thread_counts: list[int], backends: list[str]) -> dict:
    import torch

    preds, refs = unique_batch(n, seed=0)
    exact = [[p] if i % 2 else r for i, (p, r) in enumerate(zip(preds, refs, strict=True))]
    out = {}
    for name in ("exact_match", "anls", "relaxed_accuracy", "vqa_accuracy", "ocrbench"):
        out[name] = bench_judge(name, preds, exact, batch)[0]
        print(name, out[name], flush=True)
    reference: list[float] = []  # torch fp32 scores of the unique answers (first thread count)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for scenario, (p, r) in (("unique", unique_batch(n, 1)), ("grpo", grpo_batch(n, 2))):
            key = f"embedding_cosine/{scenario}/threads={threads}"
            out[key], scores = bench_judge("embedding_cosine", p, r, batch)
            out[key]["encodes_per_answer"] = encodes_per_answer(p, r, batch)
            reference = reference or (scores if scenario == "unique" else [])
            print(key, out[key], flush=True)
        for backend in (b for b in backends if b != "torch"):
            key = f"embedding_cosine[{backend}]/unique/threads={threads}"
            p, r = unique_batch(n, 1)
            out[key], scores = bench_judge("embedding_cosine", p, r, batch, backend=backend)
            gaps = [abs(a - b) for a, b in zip(scores, reference, strict=True)]
            out[key]["max_abs_diff_vs_torch"] = round(max(gaps), 5)
            print(key, out[key], flush=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_main(
    url: str, token: str, items: int, concurrency: int, seconds: float, max_requests: int
) -> None:
    """Runs in its own process: load the server, print one JSON line of latencies."""
    import threading

    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60, headers=headers) as http:
            while time.monotonic() < deadline:
                with lock:
                    if len(latencies) + errors[0] >= max_requests:
                        return
                preds, refs = grpo_batch(items, rng.randint(0, 1 << 30))
                body = {
                    "items": [
                        {
                            "prediction": p,
                            "references": r,
                            "needs_high_res": rng.random() < 0.2,
                            "crop_ids": [rng.randint(0, 8)] if rng.random() < 0.3 else [],
                        }
                        for p, r in zip(preds, refs, strict=True)
                    ]
                }
                t0 = time.perf_counter()
                ok = http.post(f"{url}/score", json=body).status_code == 200
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    print(json.dumps({"latencies": latencies, "errors": errors[0], "wall_s": wall}))


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def http_bench(
    judge: str, server_kind: str, args: argparse.Namespace, backend: str = "torch"
) -> dict:
    """``server_kind``: "local" (one in-process scorer, ``--threads`` torch threads) or "ray"
    (a RewardPool of ``--workers`` actors with 1 CPU and 1 thread each); ``backend``:
    reward.embedding_backend."""
    items, concurrency, seconds = args.items, args.concurrency, args.seconds
    token, port = secrets.token_urlsafe(16), _free_port()
    env = {**os.environ, "AWARES_REWARD_TOKEN": token, "RAY_TMPDIR": "/tmp"}
    cmd = [sys.executable, "-m", "awares_rl.cli", "serve-reward", "--port", str(port)]
    if server_kind == "local":
        cmd += ["--local", f"reward.cpus_per_worker={args.threads}"]
    else:
        cmd += [f"reward.num_workers={args.workers}", "reward.cpus_per_worker=1"]
    cmd += [f"reward.judge={judge}", f"reward.embedding_backend={backend}"]
    log = tempfile.NamedTemporaryFile("w+", prefix="reward-server-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(1200):
            if server.poll() is not None:
                raise RuntimeError(f"reward server exited; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = subprocess.run(
            [
                sys.executable,
                __file__,
                "--client",
                url,
                token,
                str(items),
                str(concurrency),
                str(seconds),
                str(args.max_requests),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=True,
        )
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    os.unlink(log.name)  # kept only when the server failed
    res = json.loads(client.stdout.strip().splitlines()[-1])
    lat = res["latencies"]
    return {
        "judge": judge if backend == "torch" else f"{judge}[{backend}]",
        "server": server_kind if server_kind == "local" else f"ray x{args.workers}",
        "items_per_request": items,
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": res["errors"],
        "wall_s": round(res["wall_s"], 2),
        "p50_ms": round(1000 * _pct(lat, 0.5), 1),
        "p99_ms": round(1000 * _pct(lat, 0.99), 1),
        "requests_per_s": round(len(lat) / res["wall_s"], 1),
        "answers_per_s": round(len(lat) * items / res["wall_s"], 1),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        a = sys.argv[2:]
        return client_main(a[0], a[1], int(a[2]), int(a[3]), float(a[4]), int(a[5]))
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=4096, help="answers per local judge")
    ap.add_argument("--batch", type=int, default=256, help="answers per judge call")
    ap.add_argument(
        "--threads", default="1,2", help="torch thread counts for the local embedding judge"
    )
    ap.add_argument(
        "--backends",
        default="torch,torch-bf16,onnx,onnx-int8",
        help="reward.embedding_backend values",
    )
    ap.add_argument("--workers", type=int, default=2, help="Ray actors behind the HTTP server")
    ap.add_argument("--items", type=int, default=32, help="answers per HTTP request")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads")
    ap.add_argument("--seconds", type=float, default=15.0, help="HTTP load duration per judge")
    ap.add_argument(
        "--max-requests", type=int, default=2000, help="HTTP requests per judge, at most"
    )
    ap.add_argument(
        "--skip-http",
        action="store_true",
        help="local judges only; keep --out's earlier http rows (marked so)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/reward.json"))
    args = ap.parse_args()
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_at_start": os.getloadavg(),
        },
        "settings": vars(args),
        "local_judges": local_judges(
            args.n,
            args.batch,
            [int(t) for t in args.threads.split(",")],
            args.backends.split(","),
        ),
    }
    args.threads = int(args.threads.split(",")[0])  # the local HTTP server's thread count
    out = Path(args.out)
    if args.skip_http:
        earlier = json.loads(out.read_text()) if out.is_file() else {}
        results["http"] = earlier.get("http", [])
        results["http_from_earlier_run"] = True  # not measured with the local judges above
    else:
        rows = [("exact_match", "local"), ("embedding_cosine", "local"), ("embedding_cosine", "ray")]
        results["http"] = [http_bench(judge, kind, args) for judge, kind in rows]
        if "onnx-int8" in args.backends.split(","):  # the faster backend through the Ray pool
            results["http"].append(http_bench("embedding_cosine", "ray", args, "onnx-int8"))
    machine = results["machine"]
    machine["load_avg_at_end"] = os.getloadavg()
    # another process was busy on these cores: figures are lower than on an idle machine
    machine["under_load"] = max(machine["load_avg_at_start"][0], machine["load_avg_at_end"][0]) > 1
    for row in results["http"]:
        print("http", row, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
