"""SFT trajectories built per second on the tiny model, with the transformers and vLLM engines.

Each trajectory is the paper's construction: a greedy answer at low res and at full res (two
batched engine calls per batch), the judge, and the dataset's evidence boxes -> crop ids. The
samples are the synthetic benchmark (448-672 px sides). By default the model is a fresh, untrained
tiny model, which never emits EOS: every answer runs to ``--max-new-tokens`` (the worst case);
``--model DIR`` times a pretrained base model instead. Engine start-up is reported apart.
Writes bench/results/trajectories.json.
Usage: python bench/bench_trajectories.py [--n 32] [--batch-size 16] [--repeats 3] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import awares_rl  # noqa: F401
from data_pipeline.datasets import read_samples
from data_pipeline.synthetic import generate
from data_pipeline.trajectories import (
    TrajectoryConfig,
    build_trajectories,
    engine_tokenizer,
    make_judge_fn,
)


def time_engine(engine, samples, root: Path, cfg: TrajectoryConfig, repeats: int) -> dict:
    tok, judge = engine_tokenizer(engine), make_judge_fn(cfg)
    build_trajectories(samples[:2], root, engine, tok, judge, cfg, progress=False)  # warm-up
    times, crops = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        trajs = build_trajectories(samples, root, engine, tok, judge, cfg, progress=False)
        times.append(time.perf_counter() - t0)
        crops = sum(t.needs_crop for t in trajs)
    median = float(np.median(times))
    return {"seconds": median, "trajectories_per_s": len(samples) / median, "needs_crop": crops,
            "all_seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="base model dir (default: a fresh tiny model)")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--out", default="bench/results/trajectories.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    if args.model is None:
        from awares_rl.models.tiny import save_tiny

        model_dir = save_tiny(work / "tiny")
    else:
        model_dir = Path(args.model)
    data = generate(work / "data", n=args.n, seed=0, split="train", progress=False)
    samples = read_samples(data)[0]
    cfg = TrajectoryConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, grounder="dataset")
    results = {}
    for name in args.engines.split(","):
        t0 = time.perf_counter()
        if name == "hf":
            from awares_rl.rollout.hf_engine import HFEngine

            engine = HFEngine(str(model_dir))
        else:
            from awares_rl.rollout.vllm_engine import VLLMEngine

            engine = VLLMEngine(str(model_dir), max_model_len=4096)
        start = time.perf_counter() - t0
        results[name] = {"engine_start_s": start, **time_engine(engine, samples, data.parent, cfg, args.repeats)}
        engine.close()
        print(name, json.dumps(results[name]))
    report = {
        "n_samples": args.n, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "model": "fresh tiny (untrained)" if args.model is None else str(model_dir),
        "cpus": os.cpu_count(), "machine": platform.machine(), "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
