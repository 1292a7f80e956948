"""One sweep trial: GRPO from the run's SFT checkpoint with the trial's reward weights, then the
policy evaluated on the sweep's split. Runs inside a Ray Tune trial; a trial whose
``results.json`` exists is not re-run (the sweep resumes)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awares_rl.core.run_paths import RunPaths

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

log = logging.getLogger(__name__)

# Short names of the paper's reward weights, for labels on the plot and in the table.
SYMBOLS = {"reward.alpha_miss": "α_miss", "reward.alpha_use": "α_use", "reward.lam": "λ"}
RESULT_KEYS = ("accuracy", "rtr", "visual_tokens", "crop_rate", "tool_call_validity",
               "crop_decision_accuracy", "crop_jaccard")


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares: the recipe (the sweep's overrides and steps applied), where the
    sweep writes, the SFT model it starts from, and the data its policy is evaluated on."""

    base: RecipeConfig
    sweep_dir: str
    start_model: str
    eval_data: str
    labels: str | None  # trajectory JSONL of eval_data (crop-decision measures), if any
    train_labels: str = ""  # the run's train trajectories: GRPO's needs_high_res where a sample lacks it


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    """The trial's values as used: floats rounded to 4 decimals (random draws stay readable)."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in sorted(params.items())}


def trial_key(params: dict[str, Any]) -> str:
    """A folder name that depends on the values only, so a resumed sweep finds its trials."""
    return "t" + hashlib.sha1(json.dumps(clean_params(params), sort_keys=True).encode()).hexdigest()[:8]


def trial_label(params: dict[str, Any]) -> str:
    """``α_miss=0.8 α_use=0.05 λ=0.2`` (other keys by their field name)."""
    return " ".join(f"{SYMBOLS.get(k, k.split('.')[-1])}={v:g}" for k, v in clean_params(params).items())


def apply_params(cfg: RecipeConfig, params: dict[str, Any]) -> RecipeConfig:
    """``cfg`` with each ``section.key`` of ``params`` replaced; the sections validate the values
    (ValueError naming the field, e.g. alpha_miss <= alpha_use + lam)."""
    for key, value in params.items():
        section, name = key.split(".")
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    return cfg


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> RecipeConfig:
    """The trial's recipe: its weights applied, its own run directory under the sweep's."""
    cfg = apply_params(setup.base, clean_params(params))
    run = replace(cfg.run, out_dir=str(Path(setup.sweep_dir) / "trials"), name=trial_key(params))
    return replace(cfg, run=run)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)  # a killed trial never leaves half a result


def restart_unsaved(cfg: RecipeConfig) -> None:
    """A trial killed before its first GRPO checkpoint left metrics rows that nothing can resume
    (GRPO refuses to restart over them): its GRPO folder is the sweep's own, so it starts over."""
    from awares_rl.checkpoint import latest_checkpoint

    paths = RunPaths(cfg.run.dir)
    out = paths.logs("grpo")
    if paths.metrics("grpo").is_file() and latest_checkpoint(paths.checkpoints("grpo")) is None:
        log.warning("trial %s was stopped before its first checkpoint: its GRPO run starts over", cfg.run.name)
        shutil.rmtree(out)


def run_trial(params: dict[str, Any], setup: TrialSetup) -> dict[str, Any]:
    """Train and evaluate one trial (or read its earlier result); returns its result row."""
    from awares_rl.evaluate import evaluate
    from awares_rl.grpo import GRPOTrainer

    cfg = trial_config(setup, params)
    done = RunPaths(cfg.run.dir).results
    if done.is_file():
        return {**json.loads(done.read_text()), "cached": True}
    t0 = time.perf_counter()
    model = RunPaths(cfg.run.dir).model("grpo")
    if not (model / "config.json").is_file():  # a trial killed during its eval keeps its model
        restart_unsaved(cfg)
        labels = Path(setup.train_labels) if setup.train_labels else None
        model = GRPOTrainer(cfg, start_model=Path(setup.start_model), crop_labels=labels).fit()
    train_s = time.perf_counter() - t0
    import torch

    from awares_rl.grpo import grpo_cpus

    torch.set_num_threads(max(1, min(os.cpu_count() or 1, int(grpo_cpus(cfg)))))  # the actors are gone: their cores
    ev = replace(cfg.eval, modes=["policy"], n=setup.base.sweep.eval_n)
    summary = evaluate(replace(cfg, eval=ev), model, setup.eval_data, setup.labels)["summary"]["policy"]
    result = {"trial": trial_key(params), "label": trial_label(params), "params": clean_params(params),
              **{k: summary.get(k) for k in RESULT_KEYS}, "n": summary["n"],
              "grpo_s": train_s, "eval_s": time.perf_counter() - t0 - train_s, "cached": False}
    _write_json(done, result)
    return result


def tune_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune function trainable: one report, the trial's result row."""
    from ray import tune

    tune.report(run_trial(params, setup))
