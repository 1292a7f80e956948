"""A first check of a CUDA machine that has only torch and transformers (no vLLM, Ray, DeepSpeed):
the tiny model built in-process, HF-engine episodes, one learner step (flash-attention 2 when
importable, else sdpa), engine-vs-learner logprob agreement, peak memory and tokens/s; a JSON
report. ``--device cpu`` runs the same on a CPU (tests/test_gpu_check.py). Run it with
scripts/gpu_check.sh; exit status 1 when a check fails (the report says which).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import awares_rl  # noqa: E402,F401  (torchvision compat before transformers)
from awares_rl.core.sample import Sample  # noqa: E402
from awares_rl.learner.batch import episode_to_sequence  # noqa: E402
from awares_rl.learner.config import LearnerConfig  # noqa: E402
from awares_rl.learner.worker import LearnerWorker, OptimSettings  # noqa: E402
from awares_rl.models.config import ModelConfig  # noqa: E402
from awares_rl.models.tiny import TinyModelConfig, save_tiny  # noqa: E402
from awares_rl.rollout import EpisodeRunner, SamplingConfig  # noqa: E402
from awares_rl.rollout.hf_engine import HFEngine  # noqa: E402

QUESTIONS = ["what is in the red panel?", "what colour is the image?"]
# engine (KV-cached generate) vs learner (one full forward) on the same weights: fp32 agrees to
# ~1e-5 on CPU; the bf16 bounds are first guesses, not yet calibrated on a GPU
TOLERANCE = {"float32": (1e-3, 1e-4), "bfloat16": (0.25, 0.05), "float16": (0.1, 0.02)}  # max, mean


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=sorted(TOLERANCE), default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda="
                f"{torch.version.cuda}); use --device cpu to check the script itself")
    if min(args.prompts, args.group_size, args.max_new_tokens) < 1:
        p.error("--prompts, --group-size and --max-new-tokens must be >= 1")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "flash_attn": importlib.util.find_spec("flash_attn") is not None}
    import transformers

    env["transformers"] = transformers.__version__
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 4)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 4)  # KiB: the process's RSS


def episodes(model_dir: Path, args, attn: str) -> tuple[list, dict]:
    engine = HFEngine(str(model_dir), dtype=args.dtype, device=args.device, attn_implementation=attn)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)) for _ in range(args.prompts)]
    samples = [Sample(f"s{i}", "in-memory", QUESTIONS[i % 2], ("red",)) for i in range(args.prompts)]
    runner = EpisodeRunner(engine, engine.processor.tokenizer)
    sync(args.device)
    t0 = time.perf_counter()
    eps = runner.run(samples, args.group_size, SamplingConfig(1.0, 1.0, args.max_new_tokens), seed=0, images=images)
    sync(args.device)
    seconds = time.perf_counter() - t0
    generated = sum(sum(ep.action_mask) for ep in eps)
    engine.close()  # its memory back before the learner loads (release_memory)
    return eps, {"episodes": len(eps), "generated_tokens": generated, "seconds": round(seconds, 3),
                 "tokens_per_s": round(generated / seconds, 1), "errors": sum(ep.error is not None for ep in eps)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def learner(model_dir: Path, eps: list, args, attn: str) -> tuple[dict, dict]:
    gpus = 1.0 if args.device == "cuda" else 0.0
    worker = LearnerWorker(str(model_dir), LearnerConfig(backend="torch", gpus_per_worker=gpus, micro_batch_size=8),
                           OptimSettings(lr=1e-4, total_steps=1), ModelConfig(dtype=args.dtype, attn_implementation=attn))
    seqs = [episode_to_sequence(ep) for ep in eps if ep.error is None]
    scored = worker.eval_logprobs(seqs)
    diffs = [abs(lp[i] - ep.logprobs[i]) for ep, lp in zip([e for e in eps if e.error is None], scored)
             for i, m in enumerate(ep.action_mask) if m]
    sync(args.device)
    t0 = time.perf_counter()
    m = worker.sft_step(seqs)
    sync(args.device)
    seconds = time.perf_counter() - t0
    tokens = sum(len(s.token_ids) for s in seqs)
    step = {"loss": m["loss"], "grad_norm": m["grad_norm"], "sequences": len(seqs), "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}
    agree = {"compared_tokens": len(diffs), "max_abs": max(diffs, default=math.nan),
             "mean_abs": sum(diffs) / len(diffs) if diffs else math.nan}
    return step, agree


def checks(report: dict, dtype: str) -> dict[str, bool]:
    step, agree, max_tol, mean_tol = report["learner_step"], report["logprobs"], *TOLERANCE[dtype]
    return {"episodes_ran": report["engine"]["errors"] == 0 and report["engine"]["generated_tokens"] > 0,
            "loss_finite": math.isfinite(step["loss"]),
            "grad_norm_positive": math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0,
            "logprobs_agree": agree["compared_tokens"] > 0 and agree["max_abs"] <= max_tol
            and agree["mean_abs"] <= mean_tol}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attn = "flash_attention_2" if args.device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    report = {"device": args.device, "dtype": args.dtype, "attn_implementation": attn, "env": environment(args.device)}
    with tempfile.TemporaryDirectory(prefix="gpu_check") as tmp:
        model_dir = save_tiny(Path(tmp) / "tiny", TinyModelConfig(seed=0), QUESTIONS + ["red"])
        eps, report["engine"] = episodes(model_dir, args, attn)
        report["learner_step"], report["logprobs"] = learner(model_dir, eps, args, attn)
    report["peak_memory_gib"] = peak_memory_gib(args.device)
    report["tolerance"] = dict(zip(("max_abs", "mean_abs"), TOLERANCE[args.dtype]))
    report["checks"] = checks(report, args.dtype)
    report["ok"] = all(report["checks"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
