"""Rollout-only throughput (episodes/s) of a RolloutPool with 2 workers vs 1, each on 1 thread
(``rollout.cpus_per_worker=1``), on the tiny model and the synthetic data: the same step's prompts
split over the workers, as GRPO does. The goal is >= 1.7x with 2 free cores.

Writes bench/results/rollout_scaling.json.
Usage: python bench/bench_rollout_scaling.py [--backend hf] [--prompts 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import ray

import awares_rl  # noqa: F401
from awares_rl.config import load_recipe
from awares_rl.models.tiny import save_tiny
from awares_rl.rollout.pool import RolloutPool
from awares_rl.workspace import ensure_data
from cluster.actor_group import init_local_ray
from data_pipeline.datasets import read_samples


def episodes_per_s(cfg, model_dir: Path, workers: int, prompts: int, steps: int) -> dict:
    train = ensure_data(cfg, "train")
    samples = read_samples(train)[0]
    pool = RolloutPool(cfg.rollout, cfg.model, str(model_dir), cfg.run.seed, num_workers=workers)
    try:
        pool.rollout(samples[:prompts], str(train.parent), 0, cfg.run.seed)  # engines up, first-call set-up
        times = []
        for step in range(1, steps + 1):
            batch = [samples[(step * prompts + i) % len(samples)] for i in range(prompts)]
            t0 = time.perf_counter()
            episodes, _ = pool.rollout(batch, str(train.parent), step, cfg.run.seed)
            times.append(time.perf_counter() - t0)
    finally:
        pool.shutdown()
    step_s = statistics.median(times)
    return {"step_s": step_s, "episodes_per_step": len(episodes), "episodes_per_s": len(episodes) / step_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="bench/results/rollout_scaling.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cfg = load_recipe("recipes/tiny_cpu.yaml", [
        f"run.out_dir={tmp}", "run.name=bench", f"data.n_train={4 * args.prompts}", "data.n_val=2", "data.n_test=2",
        f"rollout.backend={args.backend}", f"rollout.group_size={args.group_size}", "rollout.max_new_tokens=16",
        "rollout.cpus_per_worker=1", "rollout.threads=0",  # 1 thread a worker (the recipe's -1: all cores each)
    ])
    model_dir = save_tiny(tmp / "tiny")
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(dir="/tmp"))
    results = {f"workers={w}": episodes_per_s(cfg, model_dir, w, args.prompts, args.steps) for w in (1, 2)}
    ray.shutdown()
    speedup = results["workers=2"]["episodes_per_s"] / results["workers=1"]["episodes_per_s"]
    load = os.getloadavg()
    out = {"backend": args.backend, "prompts_per_step": args.prompts, "group_size": args.group_size,
           "threads_per_worker": 1, "steps_measured": args.steps, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "load_average_1_5_15": load,
           "speedup_2_vs_1": speedup, "goal": 1.7,
           "note": "median step time after a warm-up step; untrained tiny model (episodes end at "
                   "max_new_tokens or on a malformed call); a load average above 0 means other "
                   "processes shared the cores", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
