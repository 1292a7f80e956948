"""SFT throughput (samples/s, tokens/s) of the LearnerWorker: torch vs DeepSpeed, 1 vs 2 workers.

Each configuration runs as Ray actors (1 CPU and 1 torch thread each) on the tiny Qwen2.5-VL of
recipes/tiny_cpu.yaml, on trajectories shaped like the synthetic benchmark's: 448-672 px images,
half of them direct answers (the low-res view only), half tool calls (+ one full-res crop). A step
is ``--batch`` sequences in micro-batches of ``--micro``; the first ``--warmup`` steps are not
timed. Wall time is measured in the driver around the step call (collation, transfer and
gradient reduction included). Writes bench/results/sft.json.

Usage: python bench/bench_sft.py [--steps 3] [--batch 16] [--micro 4]
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

import numpy as np
from PIL import Image

import awares_rl  # noqa: F401  (torchvision compat)
from awares_rl.learner.batch import TokenSequence, trajectory_to_sequence
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from awares_rl.models.tiny import TinyModelConfig, save_tiny
from cluster.actor_group import ActorGroup, init_local_ray

CONFIGS = (  # name, backend, workers, ZeRO stage
    ("torch_1w", "torch", 1, 0),
    ("torch_2w", "torch", 2, 0),
    ("deepspeed_zero2_1w", "deepspeed", 1, 2),
    ("deepspeed_zero2_2w", "deepspeed", 2, 2),
)
QUESTIONS = ("what is written in panel 2?", "what colour is the large mark?")


def make_sequences(processor, n: int, seed: int = 0) -> list[TokenSequence]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (int(rng.choice([448, 504, 560, 616, 672])) for _ in range(2))
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        tool = i % 2 == 0
        traj = {"id": str(i), "question": QUESTIONS[i % 2], "crop_ids": [i % 9] if tool else [],
                "turns": [f"GET_CROPS: ['{i % 9}']", "red 42"] if tool else ["blue"]}
        out.append(trajectory_to_sequence(processor, traj, image=image))
    return out


def time_config(model_dir: Path, seqs: list[TokenSequence], backend: str, workers: int, stage: int,
                micro: int, steps: int, warmup: int) -> dict:
    cfg = LearnerConfig(backend=backend, num_workers=workers, zero_stage=stage, micro_batch_size=micro)
    optim = OptimSettings(lr=1e-4, total_steps=steps + warmup, warmup_steps=1)
    t0 = time.perf_counter()
    group = ActorGroup(LearnerWorker, workers, str(model_dir), cfg, optim)
    group.call("ping")
    start_s = time.perf_counter() - t0
    walls, metrics = [], {}
    for step in range(warmup + steps):
        t = time.perf_counter()
        metrics = group.call_split("sft_step", seqs)[0]
        if step >= warmup:
            walls.append(time.perf_counter() - t)
    group.shutdown()
    wall = statistics.median(walls)
    return {"start_s": round(start_s, 2), "step_s_median": round(wall, 3), "steps_timed": steps,
            "samples_per_s": round(len(seqs) / wall, 2), "tokens_per_s": round(metrics["tokens"] / wall, 1),
            "tokens_per_step": metrics["tokens"], "target_tokens_per_step": metrics["target_tokens"],
            "final_loss": round(metrics["loss"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--configs", default=",".join(c[0] for c in CONFIGS))
    ap.add_argument("--out", default="bench/results/sft.json")
    args = ap.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    import ray

    load = os.getloadavg()[0]  # other processes on the machine skew 2-worker numbers most
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    model_dir = save_tiny(Path(tempfile.mkdtemp()) / "tiny", TinyModelConfig(vision_depth=3), QUESTIONS)
    seqs = make_sequences(load_processor(model_dir), args.batch)
    results = {}
    for name, backend, workers, stage in CONFIGS:
        if name in args.configs.split(","):
            results[name] = time_config(model_dir, seqs, backend, workers, stage, args.micro, args.steps, args.warmup)
            print(name, results[name], flush=True)
    ray.shutdown()
    out = {"batch": args.batch, "micro_batch": args.micro, "threads_per_worker": 1, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "load_avg_1m": [load, os.getloadavg()[0]],
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
