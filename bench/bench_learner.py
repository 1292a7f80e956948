"""The learner's forward + backward over one GRPO batch (64 episodes of the SFT checkpoint, micro-
batches of 8), with each of its savings switched on in turn, in one process:

    plain   — shuffled order (as GRPO's mini-batches take them), every image processed and run
              through the vision tower per use
    ordered — + ``batch_order`` (a group's episodes side by side, by length: less padding)
    dedupe  — + ``collate_sequences(dedupe_images=True)``: one vision pass per distinct image
    cached  — + ``PixelCache`` warm (a step's later passes: the images were processed before)
    prefix  — + ``share_prefix``: a group's shared prompt runs once, its KV cache repeated
              (``awares_rl.learner.prefix``; the recipe's default)

Same loss in every variant (checked here to 1e-5; tests/test_lean_learner.py checks the gradients).
Episodes come from the transformers engine (``rollout.backend=hf``) on synthetic samples.
Writes bench/results/learner.json.   Usage: python bench/bench_learner.py [--model DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import awares_rl  # noqa: F401
from awares_rl.config import load_recipe
from awares_rl.learner.batch import PixelCache, batch_order, collate_sequences, episode_to_sequence
from awares_rl.learner.forward import sequence_logprobs
from awares_rl.learner.ppo import PPOClip
from awares_rl.rollout import EpisodeRunner, EpisodeSettings, SamplingConfig
from awares_rl.rollout.hf_engine import HFEngine
from awares_rl.workspace import ensure_data
from data_pipeline.datasets import read_samples

SFT_MODEL = "runs/tiny_cpu/models/sft"
VARIANTS = {"plain": (False, False, False, False), "ordered": (True, False, False, False),
            "dedupe": (True, True, False, False), "cached": (True, True, True, False),
            "prefix": (True, True, True, True)}  # (batch_order, dedupe_images, warm PixelCache, share_prefix)


def episodes(model_dir: Path, seed: int = 0) -> tuple:
    """(processor, 64 episodes): 8 synthetic samples x G=8, sampled at temperature 1 (the GRPO bench's settings)."""
    cfg = load_recipe("recipes/tiny_cpu.yaml", [f"run.out_dir={tempfile.mkdtemp()}", "data.n_train=8"])
    train = ensure_data(cfg, "train")
    engine = HFEngine(str(model_dir))
    runner = EpisodeRunner(engine, engine.processor.tokenizer, EpisodeSettings(cfg.rollout.low_res_scale))
    eps = runner.run(read_samples(train)[0], 8, SamplingConfig(1.0, 1.0, 16), seed=seed, root=train.parent)
    return engine.processor, eps


def one_pass(model, processor, seqs, micro: int, ordered: bool, dedupe: bool, cache, share: bool = False) -> dict:
    """Forward + backward over ``seqs`` in micro-batches (no optimizer step): seconds, loss, padding."""
    objective = PPOClip(tis_cap=2.0)
    order = batch_order(seqs) if ordered else random.Random(1).sample(range(len(seqs)), len(seqs))
    seqs = [seqs[i] for i in order]
    t0, loss_sum, padded, patches = time.perf_counter(), 0.0, 0, 0
    for i in range(0, len(seqs), micro):
        batch = collate_sequences(seqs[i:i + micro], processor, dedupe_images=dedupe, cache=cache)
        loss, _ = objective(sequence_logprobs(model, batch, objective.targets(batch), share_prefix=share), batch)
        loss.backward()
        loss_sum += float(loss.detach())
        padded += int((batch["attention_mask"] == 0).sum())
        patches += int(batch.get("pixel_values", torch.zeros(0)).shape[0])
    model.zero_grad(set_to_none=True)
    tokens = sum(len(s.token_ids) for s in seqs)
    return {"s": time.perf_counter() - t0, "loss_sum": loss_sum, "padding_share": padded / (tokens + padded),
            "vision_patches": patches}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SFT_MODEL)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/learner.json")
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model there; train the SFT checkpoint first "
                         f"(`awares-rl run` / `make run` writes {SFT_MODEL}) or pass a model dir")
    torch.set_num_threads(args.threads)
    processor, eps = episodes(Path(args.model))
    rng = random.Random(0)
    seqs = [episode_to_sequence(ep, rng.uniform(-1, 1)) for ep in eps if ep.error is None]
    model = HFEngine(args.model).model.train()  # a fresh copy of the policy
    warm = PixelCache()
    one_pass(model, processor, seqs, 8, True, True, warm)  # warm-up (and fills the cache)
    runs = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
        for name, (ordered, dedupe, cached, share) in VARIANTS.items():
            runs[name].append(one_pass(model, processor, seqs, 8, ordered, dedupe, warm if cached else None, share))
    losses = [r["loss_sum"] for rs in runs.values() for r in rs]
    if max(losses) - min(losses) > 1e-5 * max(1.0, abs(losses[0])):
        raise SystemExit(f"the variants' losses differ: {losses}")
    plain = statistics.median(r["s"] for r in runs["plain"])
    results = {name: {"median_s": statistics.median(r["s"] for r in rs), "all_s": [round(r["s"], 3) for r in rs],
                      "speedup_vs_plain": plain / statistics.median(r["s"] for r in rs),
                      "padding_share": rs[0]["padding_share"], "vision_patches": rs[0]["vision_patches"]}
               for name, rs in runs.items()}
    out = {"model": args.model, "episodes": len(seqs), "micro_batch_size": 8, "threads": args.threads,
           "cpus": os.cpu_count(), "crop_rate": sum(bool(ep.crop_ids) for ep in eps) / len(eps),
           "tokens": sum(len(s.token_ids) for s in seqs), "loss_sum": losses[0], "results": results,
           "note": "forward+backward of one pass over the batch (no optimizer step); medians of interleaved repeats"}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
