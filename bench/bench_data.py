"""Synthetic data generation throughput: samples written per second -> bench/results/data.json.

Usage: python bench/bench_data.py [--n 256] [--workers 1 2]
Measures the in-memory scene generator and ``generate()`` (render + PNG + JSONL) per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import awares_rl  # noqa: F401  (torchvision shim first)
from cluster.actor_group import init_local_ray
from data_pipeline.config import SynthConfig
from data_pipeline.scene import make_scene
from data_pipeline.synthetic import generate

RESULTS = Path(__file__).parent / "results" / "data.json"


def bench_scenes(n: int, cfg: SynthConfig) -> float:
    """Scenes per second, rendered in memory (no PNG, no disk)."""
    start = time.perf_counter()
    for i in range(n):
        make_scene(0, "bench", i, cfg)
    return n / (time.perf_counter() - start)


def bench_generate(n: int, workers: int, backend: str, cfg: SynthConfig) -> float:
    """Samples per second written by ``generate()`` into a fresh folder (start-up included)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate(tmp, n, seed=0, split="bench", cfg=cfg, workers=workers, backend=backend,
                 progress=False)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    cfg = SynthConfig()
    rows = [{"what": "make_scene (in memory)", "workers": 1,
             "samples_per_s": round(bench_scenes(args.n, cfg), 1)}]
    for workers in args.workers:
        for backend in (("serial",) if workers == 1 else ("process", "ray")):
            rate = bench_generate(args.n, workers, backend, cfg)
            rows.append({"what": f"generate ({backend}{', cold start' if backend == 'ray' else ''})",
                         "workers": workers, "samples_per_s": round(rate, 1)})
            print(rows[-1])
        if workers > 1:  # Ray already running (as in a cluster job): task throughput alone
            import ray

            init_local_ray(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            rate = bench_generate(args.n, workers, "ray", cfg)
            ray.shutdown()
            rows.append({"what": "generate (ray, warm)", "workers": workers,
                         "samples_per_s": round(rate, 1)})
            print(rows[-1])
    result = {"n": args.n, "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "config": "SynthConfig() defaults (448-672 px)", "results": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
