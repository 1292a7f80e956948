"""``awares-rl run RECIPE``: the whole AwaRes pipeline, each stage resumed or skipped when done.

synthetic data -> base model (pretrain) -> SFT trajectories -> cold-start SFT -> GRPO -> eval.
The final table compares low-res only and full-res only (the base model, as the paper's rows),
the SFT policy and the GRPO policy on the test split: accuracy, RTR and visual tokens; it is
printed and written to ``<run>/results.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from awares_rl.config import RecipeConfig, load_recipe
from awares_rl.run_paths import RunPaths
from awares_rl.workspace import ensure_data

log = logging.getLogger(__name__)


def _done(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


def stage_base(cfg: RecipeConfig) -> Path:
    """Pretrain the embedded tiny model to read (skipped when model.path names a real model)."""
    if cfg.model.path:
        return Path(cfg.model.path)
    from awares_rl.pretrain import fit

    out = RunPaths(cfg.run.dir).model("base")
    if not _done(out):
        pcfg = replace(cfg.pretrain, out_dir=str(cfg.run.dir / "pretrain"), seed=cfg.run.seed,
                       synth=cfg.synth, model=cfg.tiny)
        trained = fit(pcfg)
        out.parent.mkdir(parents=True, exist_ok=True)
        trained.rename(out)
    return out


def stage_trajectories(recipe: str, overrides: list[str], cfg: RecipeConfig) -> None:
    from data_pipeline.trajectories import trajectories_from_recipe

    for split in ("train", "val", "test"):  # test labels score the crop decisions of the final table
        trajectories_from_recipe(recipe, overrides, split=split, model_dir=stage_base(cfg))


def stage_sft(cfg: RecipeConfig) -> Path:
    import ray

    from awares_rl.sft import SFTTrainer

    out = RunPaths(cfg.run.dir).model("sft")
    if not _done(out):
        SFTTrainer(cfg).fit()
        if not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()  # GRPO sizes its own local Ray for rollout + reward + learner actors
    return out


def stage_grpo(cfg: RecipeConfig, sft_dir: Path) -> Path:
    from awares_rl.grpo import GRPOTrainer

    out = RunPaths(cfg.run.dir).model("grpo")
    return out if _done(out) else GRPOTrainer(cfg, start_model=sft_dir).fit()


def final_table(cfg: RecipeConfig, base: Path, sft: Path, grpo: Path) -> dict[str, dict]:
    """Rows low_res, full_res (base model), sft, grpo (policy) on the test split."""
    from awares_rl.evaluate import evaluate

    data = ensure_data(cfg, cfg.eval.split)
    rows: dict[str, dict] = {}
    base_eval = evaluate(replace(cfg, eval=replace(cfg.eval, modes=["low", "full"])), base, data)
    rows["low_res"], rows["full_res"] = base_eval["summary"]["low"], base_eval["summary"]["full"]
    for name, model in (("sft", sft), ("grpo", grpo)):
        labels = cfg.run.dir / "trajectories" / f"{cfg.eval.split}.jsonl"
        report = evaluate(replace(cfg, eval=replace(cfg.eval, modes=["policy"])), model, data,
                          labels if labels.is_file() else None)
        rows[name] = report["summary"]["policy"]
    return rows


def results_table(rows: dict[str, dict]) -> Table:
    table = Table(title="AwaRes on the embedded default (test split)")
    for col in ("model", "accuracy %", "RTR", "visual tokens", "crop rate %", "tool-call validity %"):
        table.add_column(col)
    for name, r in rows.items():
        valid = r.get("tool_call_validity")
        table.add_row(name, f"{r['accuracy']:.1f}", f"{r['rtr']:.3f}", f"{r['visual_tokens']:.1f}",
                      f"{r.get('crop_rate', 0.0):.1f}", "-" if valid is None else f"{valid:.1f}")
    return table


def run_pipeline(recipe: str, overrides: list[str]) -> dict:
    cfg = load_recipe(recipe, overrides)
    t0, times = time.perf_counter(), {}
    for split in ("train", "val", "test"):
        ensure_data(cfg, split)
    times["data_s"] = time.perf_counter() - t0
    base = stage_base(cfg)
    times["base_s"] = time.perf_counter() - t0 - sum(times.values())
    stage_trajectories(recipe, overrides, cfg)
    times["trajectories_s"] = time.perf_counter() - t0 - sum(times.values())
    sft = stage_sft(cfg)
    times["sft_s"] = time.perf_counter() - t0 - sum(times.values())
    grpo = stage_grpo(cfg, sft)
    times["grpo_s"] = time.perf_counter() - t0 - sum(times.values())
    rows = final_table(cfg, base, sft, grpo)
    times["eval_s"] = time.perf_counter() - t0 - sum(times.values())
    results = {**rows, "stage_seconds": times, "total_seconds": time.perf_counter() - t0}
    (cfg.run.dir / "results.json").write_text(json.dumps(results, indent=1))
    Console().print(results_table(rows))
    print(f"results written to {cfg.run.dir / 'results.json'} ({results['total_seconds'] / 60:.1f} min)")
    return results


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: data, base model, trajectories, SFT, GRPO, eval")
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny_cpu.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=lambda args: run_pipeline(args.recipe, args.overrides) and 0)


def add_pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="train the embedded tiny VLM to read (plain VQA, mixed resolutions)")
    p.add_argument("--recipe", default="recipes/tiny_cpu.yaml", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. pretrain.steps=100")
    p.set_defaults(func=lambda args: print(stage_base(load_recipe(args.recipe, args.overrides))) or 0)
