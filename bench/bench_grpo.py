"""GRPO step time split by stage (rollout, reward, learner, sync), episodes/s and the share of wall
time spent inside model computation, with 1 and 2 rollout workers, on the tiny model.

Writes bench/results/grpo.json.   Usage: python bench/bench_grpo.py [--steps 3] [--backend vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import ray

import awares_rl  # noqa: F401
from awares_rl.config import load_recipe
from awares_rl.grpo import GRPOTrainer
from awares_rl.models.tiny import save_tiny


def one_config(workers: int, steps: int, backend: str, model_dir: Path) -> dict:
    out = Path(tempfile.mkdtemp())
    cfg = load_recipe("recipes/tiny_cpu.yaml", [
        f"run.out_dir={out}", "run.name=bench", "data.n_train=64", f"rollout.num_workers={workers}",
        f"rollout.backend={backend}", "rollout.group_size=8", "rollout.max_new_tokens=16",
        f"grpo.steps={steps}", "grpo.prompts_per_step=8", "grpo.save_every=0", "logging.wandb=false",
        "learner.backend=deepspeed", "learner.zero_stage=1",
    ])
    GRPOTrainer(cfg, start_model=model_dir).fit()
    ray.shutdown()
    rows = [json.loads(x) for x in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()][1:]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith(("time/", "perf/"))}
    return {"steps_measured": len(rows), **med}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--out", default="bench/results/grpo.json")
    args = ap.parse_args()
    model_dir = save_tiny(Path(tempfile.mkdtemp()) / "tiny")
    results = {f"rollout_workers={w}": one_config(w, args.steps + 1, args.backend, model_dir) for w in (1, 2)}
    out = {"backend": args.backend, "episodes_per_step": 64, "cpus": os.cpu_count(),
           "note": "first step (engine warm-up) excluded; medians over the remaining steps", "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
