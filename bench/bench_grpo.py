"""GRPO step time split by stage (rollout, reward, reference, old_logprobs, learner, sync),
episodes/s, the share of wall time spent inside model computation and the peak memory (RSS) of
each actor process, on a trained SFT checkpoint (realistic episode lengths and tool calls).

Writes bench/results/grpo.json.
Usage: python bench/bench_grpo.py [--model runs/tiny_cpu/models/sft] [--steps 3] [--workers 1,2]
       [--set learner.threads=2 ...]
``--model tiny`` runs the untrained tiny model instead (short, tool-less episodes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
from pathlib import Path

import psutil
import ray

import awares_rl  # noqa: F401
from awares_rl.config import load_recipe
from awares_rl.grpo import GRPOTrainer, grpo_cpus, start_local_ray
from awares_rl.models.tiny import save_tiny

SFT_MODEL = "runs/tiny_cpu/models/sft"
RAY_INTERNAL = ("IDLE", "DashboardAgent", "RuntimeEnvAgent", "_master_address")
RSS_TAG = "AWARES_BENCH_TAG"  # inherited by the Ray processes this bench starts (or a head started with it)
MIN_REPORTED = 32 << 20  # smaller processes (short-lived helpers) are left out of the report


class PeakRSS:
    """Polls our Ray session's processes (actors and their vLLM engine cores, found by the
    ``RSS_TAG`` in their environment): peak RSS per actor process, named by Ray's process title
    (``ray::LearnerWorker...``). With ``RAY_ADDRESS`` (a head already up) start that head with
    the same ``AWARES_BENCH_TAG`` in its environment."""

    def __init__(self, every_s: float = 0.2) -> None:
        os.environ.setdefault(RSS_TAG, f"bench-{os.getpid()}")
        self.every_s, self.peak, self.names, self.others = every_s, {}, {}, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _name(self, proc: psutil.Process) -> str | None:
        """``Class`` for a Ray actor, ``Class/<title>`` for a process under one (vLLM's engine core)."""
        title = (proc.cmdline() or [""])[0]
        if title.startswith("ray::"):
            name = title[5:].split(".")[0].split(" ")[0]
            return None if name in RAY_INTERNAL else name
        parent = proc.parent()
        if parent is not None and parent.pid in self.names:
            return f"{self.names[parent.pid].split('/')[0]}/{proc.name()}"  # e.g. VLLM::EngineCore
        return None

    def _ours(self) -> list[psutil.Process]:
        """Processes of this bench's Ray (its own, or the head started with our RSS_TAG)."""
        tag, out = os.environ[RSS_TAG], []
        for proc in psutil.process_iter():
            if proc.pid in self.others:
                continue
            try:
                if proc.pid in self.names or proc.environ().get(RSS_TAG) == tag:
                    out.append(proc)
                else:
                    self.others.add(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            for proc in self._ours():
                try:
                    name = self.names.get(proc.pid) or self._name(proc)
                    if name:
                        self.names[proc.pid] = name
                        self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), proc.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                    continue

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        """{"<actor> (pid N)": peak RSS in MiB}, actors in start order (with a KL term the second
        LearnerWorker is the frozen reference)."""
        return {f"{self.names[p]} (pid {p})": round(self.peak[p] / 2**20, 1) for p in sorted(self.peak)
                if self.peak[p] >= MIN_REPORTED}


def one_config(workers: int, steps: int, backend: str, model_dir: Path, overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp())
    cfg = load_recipe("recipes/tiny_cpu.yaml", [
        f"run.out_dir={out}", "run.name=bench", "data.n_train=64", f"rollout.num_workers={workers}",
        f"rollout.backend={backend}", "rollout.group_size=8", "rollout.max_new_tokens=16",
        f"grpo.steps={steps}", "grpo.prompts_per_step=8", "grpo.save_every=0", "logging.wandb=false",
        "learner.backend=deepspeed", "learner.zero_stage=1", *overrides,
    ])
    with PeakRSS() as rss:
        start_local_ray(grpo_cpus(cfg))  # retried on a slow raylet start (init_local_ray)
        GRPOTrainer(cfg, start_model=model_dir).fit()
        ray.shutdown()
    rows = [json.loads(x) for x in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()][1:]
    keys = ("time/", "perf/", "sync/", "train/policy_lag", "rollout/crop_rate", "rollout/num_crops",
            "rollout/visual_tokens", "rollout/accuracy", "rollout/response_tokens", "learner/tokens")
    names = sorted({k for r in rows for k in r if k.startswith(keys)})  # time/rollout_wait_s: not every step
    med = {k: statistics.median(r[k] for r in rows if k in r) for k in names}
    return {"steps_measured": len(rows), **med, "peak_rss_mib": rss.report()}


def resolve_model(arg: str) -> Path:
    """The start checkpoint: ``tiny`` builds the untrained tiny model; otherwise a model dir."""
    if arg == "tiny":
        return save_tiny(Path(tempfile.mkdtemp()) / "tiny")
    path = Path(arg)
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {arg}: no model there. Train the SFT checkpoint first (`awares-rl run` "
                         f"or `make run`, which writes {SFT_MODEL}), pass another model dir, or "
                         f"--model tiny for the untrained tiny model")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SFT_MODEL, help=f"start checkpoint (default {SFT_MODEL}; 'tiny': untrained)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (one warm-up step more is run)")
    ap.add_argument("--workers", default="1", help="rollout worker counts to run, comma-separated")
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. learner.threads=2")
    ap.add_argument("--out", default="bench/results/grpo.json")
    args = ap.parse_args()
    model_dir = resolve_model(args.model)
    results = {f"rollout_workers={w}": one_config(int(w), args.steps + 1, args.backend, model_dir, args.set)
               for w in args.workers.split(",")}
    out = {"backend": args.backend, "model": args.model, "episodes_per_step": 64, "cpus": os.cpu_count(),
           "overrides": args.set, "note": "first step (engine warm-up) excluded; medians over the remaining steps",
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
