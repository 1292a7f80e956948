"""``awares-rl run RECIPE``: the whole AwaRes pipeline, each stage resumed or skipped when done.

synthetic data -> base model (pretrain) -> SFT trajectories -> cold-start SFT -> GRPO -> eval.
The final table compares low-res only and full-res only (the base model, as the paper's rows),
the SFT policy and the GRPO policy on the test split: accuracy, RTR and visual tokens; it is
printed and written to ``<run>/results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from awares_rl.commands.console import banner, console, skipped, stage_logs
from awares_rl.config import RecipeConfig, load_recipe
from awares_rl.core.run_paths import RunPaths
from awares_rl.workspace import base_model, data_file, ensure_data

log = logging.getLogger(__name__)


def _done(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


def stage_base(cfg: RecipeConfig) -> Path:
    """Pretrain the embedded tiny model to read (skipped when model.path names a real model)."""
    if cfg.model.path:
        return base_model(cfg)
    from awares_rl.pretrain import fit

    out = RunPaths(cfg.run.dir).model("base")
    if not _done(out):
        pcfg = replace(cfg.pretrain, out_dir=str(RunPaths(cfg.run.dir).logs("pretrain")), seed=cfg.run.seed,
                       synth=cfg.synth, model=cfg.tiny)
        trained = fit(pcfg)
        out.parent.mkdir(parents=True, exist_ok=True)
        trained.rename(out)
    return out


def stage_trajectories(cfg: RecipeConfig) -> None:
    """Train, val and test trajectories (test labels score the crop decisions of the final
    table); a split whose stats file exists is done. One engine serves all splits."""
    from awares_rl.trajectories import build_split
    from data_pipeline.trajectories import make_builder

    base = stage_base(cfg)
    todo = [s for s in ("train", "val", "test") if not RunPaths(cfg.run.dir).trajectory_stats(s).is_file()]
    if not todo:
        return
    builder = None
    if cfg.trajectories.num_workers == 1:
        builder = make_builder(base, cfg.rollout, cfg.model, cfg.trajectories, cfg.reward, cfg.run.seed)
    try:
        for split in todo:
            build_split(cfg, split, model_dir=base, builder=builder)
    finally:
        if builder is not None:
            builder.close()


def stage_sft(cfg: RecipeConfig) -> Path:
    from awares_rl.sft import SFTTrainer

    out = RunPaths(cfg.run.dir).model("sft")
    if not _done(out):
        SFTTrainer(cfg).fit()  # its local Ray ends with the stage (stage_logs): GRPO sizes its own
    return out


def stage_grpo(cfg: RecipeConfig, sft_dir: Path) -> Path:
    from awares_rl.grpo import GRPOTrainer

    out = RunPaths(cfg.run.dir).model("grpo")
    return out if _done(out) else GRPOTrainer(cfg, start_model=sft_dir).fit()


def final_table(cfg: RecipeConfig, base: Path, sft: Path, grpo: Path) -> dict[str, dict]:
    """Rows low_res, full_res (base model), sft, grpo (policy) on the test split; on synthetic
    data the base row also gets ``grounding``: the crop id of the asked panel, at low res, on val.
    One engine serves every row: the SFT and GRPO weights are loaded into it (``switch_engine``)."""
    from awares_rl.evaluate import evaluate
    from awares_rl.rollout import make_engine, switch_engine

    data = ensure_data(cfg, cfg.eval.split)
    rows: dict[str, dict] = {}
    engine, serving = make_engine(cfg.rollout, cfg.model, base, seed=cfg.run.seed), base
    try:
        base_eval = evaluate(replace(cfg, eval=replace(cfg.eval, modes=["low", "full"])), base, data, engine=engine)
        rows["low_res"], rows["full_res"] = base_eval["summary"]["low"], base_eval["summary"]["full"]
        if cfg.data.dir is None:
            probe = evaluate(replace(cfg, eval=replace(cfg.eval, modes=["grounding"])), base,
                             ensure_data(cfg, "val"), engine=engine)
            rows["low_res"]["grounding"] = probe["summary"]["grounding"]["accuracy"]
        labels = RunPaths(cfg.run.dir).trajectories(cfg.eval.split)
        for name, model in (("sft", sft), ("grpo", grpo)):
            engine, serving = switch_engine(engine, serving, model, cfg.rollout, cfg.model, seed=cfg.run.seed), model
            report = evaluate(replace(cfg, eval=replace(cfg.eval, modes=["policy"])), model, data,
                              labels if labels.is_file() else None, engine=engine)
            rows[name] = report["summary"]["policy"]
    finally:
        engine.close()
    return rows


def log_results(cfg: RecipeConfig, rows: dict[str, dict]) -> None:
    """The final table where people look: PNGs in the run directory (accuracy vs RTR, learning
    curves) and a W&B run ``<name>-eval`` with the rows, the scatter plot and the PNGs."""
    from awares_rl.plots import accuracy_vs_rtr, learning_curves
    from awares_rl.tracking import stage_tracker

    paths = RunPaths(cfg.run.dir)
    scatter = accuracy_vs_rtr(rows, paths.figure("accuracy_vs_rtr"), f"{cfg.run.name} ({cfg.eval.split} split)")
    curves = learning_curves(cfg.run.dir, paths.figure("learning_curves"))
    with stage_tracker(cfg, "eval", paths.logs("eval")) as tracker:
        tracker.log_results(rows, images={"accuracy_vs_rtr_png": scatter, "learning_curves_png": curves})


def stage_eval(cfg: RecipeConfig, base: Path, sft: Path, grpo: Path) -> dict[str, dict]:
    """The final table's rows, logged (figures, W&B)."""
    rows = final_table(cfg, base, sft, grpo)
    log_results(cfg, rows)
    return rows


def results_table(rows: dict[str, dict]) -> Table:
    table = Table(title="AwaRes on the embedded default (test split)")
    cols = (("accuracy %", "accuracy", ".1f"), ("RTR", "rtr", ".3f"), ("visual tokens", "visual_tokens", ".1f"),
            ("crop rate %", "crop_rate", ".1f"), ("valid calls %", "tool_call_validity", ".1f"),
            ("crop Jaccard", "crop_jaccard", ".3f"), ("grounding %", "grounding", ".1f"), ("truncated", "truncated", "d"))
    table.add_column("model")
    for col, _, _ in cols:
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, *("-" if r.get(k) is None else format(r[k], spec) for _, k, spec in cols))
    return table


STAGES = {  # name: (title, what it does)
    "data": ("Data", "the synthetic benchmark: train, val and test samples"),
    "base": ("Base model", "pretrain the embedded tiny VLM to read (plain VQA at mixed resolutions)"),
    "trajectories": ("Trajectories", "the base model answers at low and full res: which samples need "
                     "a crop, and which crop (SFT labels)"),
    "sft": ("SFT", "cold-start SFT on the train trajectories, the GET_CROPS turn weighted by sft.tool_turn_weight"),
    "grpo": ("GRPO", "multi-turn GRPO from the SFT model: episodes, crop-cost rewards, PPO-clip updates"),
    "eval": ("Eval", "low-res only and full-res only (base model), the SFT and GRPO policies, on the test split"),
}


def stage_outputs(cfg: RecipeConfig) -> dict[str, tuple[Path, bool]]:
    """Each stage's output and whether it is there already (eval always runs)."""
    paths = RunPaths(cfg.run.dir)
    splits = ("train", "val", "test")
    base = Path(cfg.model.path) if cfg.model.path else paths.model("base")
    return {
        "data": (data_file(cfg, "train").parent, all(data_file(cfg, s).is_file() for s in splits)),
        "base": (base, _done(base)),
        "trajectories": (paths.trajectories("train").parent,
                         all(paths.trajectory_stats(s).is_file() for s in splits)),
        "sft": (paths.model("sft"), _done(paths.model("sft"))),
        "grpo": (paths.model("grpo"), _done(paths.model("grpo"))),
        "eval": (paths.results, False),
    }


def run_stage(cfg: RecipeConfig, name: str, fn, *args):
    """``fn(*args)`` as the pipeline's stage ``name``: its banner, or a line saying it is done
    (``fn`` then only finds its output), its logs in the run's ``logs/<name>.log``."""
    paths, (title, what) = RunPaths(cfg.run.dir), STAGES[name]
    out, done = stage_outputs(cfg)[name]
    if done:
        skipped(title, out)
    else:
        banner(title, what, out, paths.log_file(name))
    with stage_logs(paths, name):
        return fn(*args)


def run_pipeline(recipe: str, overrides: list[str]) -> dict:
    cfg = load_recipe(recipe, overrides)
    t0, times = time.perf_counter(), {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        result = run_stage(cfg, name, fn, *args)
        times[f"{name}_s"] = time.perf_counter() - start
        return result

    timed("data", lambda: [ensure_data(cfg, split) for split in ("train", "val", "test")])
    base = timed("base", stage_base, cfg)
    timed("trajectories", stage_trajectories, cfg)
    sft = timed("sft", stage_sft, cfg)
    grpo = timed("grpo", stage_grpo, cfg, sft)
    rows = timed("eval", stage_eval, cfg, base, sft, grpo)
    results = {**rows, "stage_seconds": times, "total_seconds": time.perf_counter() - t0}
    RunPaths(cfg.run.dir).results.write_text(json.dumps(results, indent=1))
    console.print(results_table(rows))
    console.print(f"results written to {RunPaths(cfg.run.dir).results} ({results['total_seconds'] / 60:.1f} min)",
                  highlight=False)
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
