"""Episodes per second for each engine on the tiny model, with and without turn-2 prefix reuse.

Each episode is the full 2-turn shape: turn 1 on the low-res view, then a tool call
(``GET_CROPS: ['0']``, appended as the policy's turn-1 output so that every episode takes the
crop path whatever the untrained model says) and turn 2 with the crop. Writes
bench/results/episodes.json.   Usage: python bench/bench_episodes.py [--n 16] [--repeats 3]
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
from PIL import Image

import awares_rl  # noqa: F401
from awares_rl.core.crops import cut_crops, low_res_view
from awares_rl.core.engine import GenRequest, SamplingConfig
from awares_rl.core.tokens import assistant_ids, crops_turn_ids, first_turn_ids
from awares_rl.models.tiny import save_tiny

SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=16)


def make_requests(tokenizer, n: int):
    rng = np.random.default_rng(0)
    turn1, turn2 = [], []
    for i in range(n):
        w, h = (int(rng.choice([448, 560, 672])) for _ in range(2))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        low = low_res_view(img)
        p1 = first_turn_ids(tokenizer, f"what is the pattern in panel {i}?")
        turn1.append(GenRequest(p1, [low], seed=i))
        p2 = p1 + assistant_ids(tokenizer, "GET_CROPS: ['0']") + crops_turn_ids(tokenizer, [0])
        turn2.append(GenRequest(p2, [low, *cut_crops(img, [0])], seed=i))
    return turn1, turn2


def time_engine(engine, turn1, turn2, repeats: int) -> dict:
    engine.generate(turn1[:2], SAMPLING)  # warm-up (first-call set-up)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.generate(turn1, SAMPLING)
        t1 = time.perf_counter()
        engine.generate(turn2, SAMPLING)
        t2 = time.perf_counter()
        times.append((t1 - t0, t2 - t1))
        if hasattr(engine, "llm"):
            engine.llm.reset_prefix_cache()  # each repeat starts cold, as a new batch of prompts
    t1s, t2s = (float(np.median([t[k] for t in times])) for k in (0, 1))
    return {"turn1_s": t1s, "turn2_s": t2s, "episodes_per_s": len(turn1) / (t1s + t2s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/episodes.json")
    args = ap.parse_args()
    model_dir = save_tiny(Path(tempfile.mkdtemp()) / "tiny")
    from awares_rl.models import load_processor

    tok = load_processor(model_dir).tokenizer
    turn1, turn2 = make_requests(tok, args.n)
    results = {}
    from awares_rl.rollout.hf_engine import HFEngine

    results["hf"] = time_engine(HFEngine(str(model_dir)), turn1, turn2, args.repeats)
    from awares_rl.rollout.vllm_engine import VLLMEngine

    for prefix in (True, False):
        engine = VLLMEngine(str(model_dir), prefix_caching=prefix, max_model_len=4096)
        results[f"vllm_prefix_{'on' if prefix else 'off'}"] = time_engine(engine, turn1, turn2, args.repeats)
        engine.close()
    out = {"n_episodes": args.n, "max_new_tokens_per_turn": SAMPLING.max_new_tokens, "repeats": args.repeats,
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
