"""Weight-sync benchmark: bytes and seconds per GRPO weight sync, learner actor -> rollout worker.

    .venv/bin/python bench/bench_weight_sync.py [--syncs 5] [--bucket-mb 64] [--out bench/results/weight_sync.json]

On a local Ray: one LearnerWorker actor (torch backend, 1 CPU) and one RolloutWorker actor
(``--backend``: HF engine by default, or vLLM; 1 CPU) on a tiny model built in-process, for each model size (the embedded default tiny
Qwen3-VL and a larger tiny config) and each of:
  - ``bucketed``: ``LearnerWorker.publish_weights`` (the learner puts its trainable weights into
    the object store itself, in buckets; only a manifest of refs passes through the driver) then
    ``RolloutWorker.load_weights`` (learner/sync.py: what ``GRPOTrainer.sync`` does);
  - ``bucketed, freeze_vision``: the same with ``learner.freeze_vision=true`` (the ViT not sent);
  - ``through the driver``: the old path, for reference: the driver gets ``named_weights`` (the
    whole state) and puts it, then the worker loads it.
One warm-up sync, then ``--syncs`` timed ones: median seconds (total, the learner's publish, the
worker's load), bytes and tensors a sync. Writes ``--out`` with the machine's load average at start
and end (other jobs share these 2 cores: figures taken under load are marked by it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from awares_rl.learner.config import LearnerConfig  # noqa: E402
from awares_rl.learner.sync import publish  # noqa: E402
from awares_rl.learner.worker import LearnerWorker, OptimSettings  # noqa: E402
from awares_rl.models.config import ModelConfig  # noqa: E402
from awares_rl.models.tiny import TinyModelConfig, build_tiny  # noqa: E402
from awares_rl.rollout.config import RolloutConfig  # noqa: E402
from awares_rl.rollout.worker import RolloutWorker  # noqa: E402
from cluster.actor_group import ActorGroup, init_local_ray  # noqa: E402

SIZES = {
    "tiny (default, 0.95 M)": TinyModelConfig(),
    "larger tiny (text 512 x 4, vision 256 x 4)": TinyModelConfig(
        text_hidden=512, text_layers=4, text_heads=8, text_kv_heads=4, text_intermediate=1536,
        vision_hidden=256, vision_depth=4, vision_heads=4, vision_intermediate=768),
}


def timed_syncs(learner: ActorGroup, worker, mode: str, n: int, bucket_mb: float) -> dict:
    rows = []
    for version in range(n + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        if mode == "driver":
            update = publish(learner.call("named_weights", True)[0], version, bucket_mb)  # put by the driver
        else:
            update = learner.call("publish_weights", version, bucket_mb)[0]  # put by the learner
        t1 = time.perf_counter()
        load_s = ray.get(worker.load_weights.remote(update, version))
        rows.append({"total_s": time.perf_counter() - t0, "publish_s": t1 - t0, "load_s": load_s,
                     "bytes": update.bytes, "tensors": update.num_tensors, "buckets": len(update.buckets)})
    timed = rows[1:]
    return {"seconds_median": statistics.median(r["total_s"] for r in timed),
            "publish_s_median": statistics.median(r["publish_s"] for r in timed),
            "load_s_median": statistics.median(r["load_s"] for r in timed),
            "bytes": timed[0]["bytes"], "tensors": timed[0]["tensors"], "buckets": timed[0]["buckets"],
            "mb_per_s": timed[0]["bytes"] / 2**20 / statistics.median(r["total_s"] for r in timed)}


def bench_size(name: str, tiny: TinyModelConfig, n: int, bucket_mb: float, backend: str,
               learner_backend: str) -> list[dict]:
    model_dir = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    model, processor = build_tiny(tiny, ["what is in the red panel?", "blue", "red"])
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    optim = OptimSettings(lr=1e-4, total_steps=10)
    worker = ray.remote(RolloutWorker).options(num_cpus=1).remote(RolloutConfig(backend=backend), ModelConfig(),
                                                                   str(model_dir))
    out = []
    for label, freeze, mode in [("bucketed", False, "learner"), ("bucketed, freeze_vision", True, "learner"),
                                ("through the driver", False, "driver")]:
        lc = LearnerConfig(backend=learner_backend, zero_stage=1, freeze_vision=freeze)
        learner = ActorGroup(LearnerWorker, 1, str(model_dir), lc, optim, cpus_per_actor=1)
        result = timed_syncs(learner, worker, mode, n, bucket_mb)
        learner.shutdown()
        out.append({"model": name, "parameters": params, "sync": label, "rollout_backend": backend,
                    "learner_backend": learner_backend, **result})
        print(json.dumps(out[-1]), flush=True)
    ray.kill(worker)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--syncs", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0, help="learner.sync_bucket_mb")
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="the rollout worker's engine")
    ap.add_argument("--learner-backend", default="torch", choices=("torch", "deepspeed"), help="ZeRO-1 for deepspeed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "weight_sync.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    init_local_ray(num_cpus=3, include_dashboard=False, log_to_driver=False,
                   _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    try:
        results = [r for name, tiny in SIZES.items()
                   for r in bench_size(name, tiny, args.syncs, args.bucket_mb, args.backend, args.learner_backend)]
    finally:
        ray.shutdown()
    report = {"bench": "weight_sync", "syncs": args.syncs, "bucket_mb": args.bucket_mb, "backend": args.backend, "learner_backend": args.learner_backend,
              "results": results,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_start": load_start, "loadavg_end": os.getloadavg()}}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
