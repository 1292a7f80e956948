"""``awares-rl sweep``: reward-weight trials on Ray Tune from the run's SFT checkpoint, and what
they show: a table (CSV and printed), the Pareto front (``pareto.json``, ``pareto.png``), a W&B
run, and the weights to pick for a target RTR or accuracy.

Every trial is one GRPO run with its own Ray actors (``sweep.max_concurrent`` at a time, each
reserving what ``grpo_cpus`` says); a failed trial is reported with its error and the others go
on; run the command again and finished trials are read back, not re-run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from awares_rl.core.config_io import ConfigError
from awares_rl.core.run_paths import RunPaths
from awares_rl.sweep.config import Dimension, grid_points, search_space
from awares_rl.sweep.pareto import pareto_front, recommend
from awares_rl.sweep.trial import RESULT_KEYS, TrialSetup, apply_params, tune_trial
from awares_rl.workspace import base_model, ensure_data

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

log = logging.getLogger(__name__)
# A trial's own process waits while its GRPO actors (which reserve their CPUs) work; Tune refuses
# a request of 0, so it asks for a sliver.
TRIAL_CPU = 0.01
COLUMNS = ("label", "status", "accuracy", "rtr", "visual_tokens", "crop_rate", "crop_jaccard", "grpo_s", "eval_s")


def sweep_dir(cfg: RecipeConfig) -> Path:
    return RunPaths(cfg.run.dir).sweep(cfg.sweep.name).resolve()


def trial_setup(cfg: RecipeConfig, trials: RecipeConfig) -> TrialSetup:
    """The shared part of every trial (``trials``: the recipe with ``sweep.overrides`` applied);
    ConfigError when the run has no SFT model yet."""
    paths, sw = RunPaths(cfg.run.dir), cfg.sweep
    start = paths.model("sft")
    if not (start / "config.json").is_file():
        raise ConfigError(f"sweep: no SFT model at {start}; train one first (`awares-rl run {cfg.run.name}` "
                          "or `awares-rl sft`), every trial starts from it")
    train, data = ensure_data(cfg, "train"), ensure_data(cfg, sw.eval_split).resolve()
    labels = paths.trajectories(sw.eval_split)
    base = replace(trials, grpo=replace(trials.grpo, steps=sw.grpo_steps),
                   data=replace(trials.data, dir=str(train.parent.resolve())))
    return TrialSetup(base, str(sweep_dir(cfg)), str(start.resolve()), str(data),
                      str(labels.resolve()) if labels.is_file() else None,
                      str(paths.trajectories("train").resolve()))


def check_grid(cfg: RecipeConfig, dims: list[Dimension]) -> None:
    """Every grid point is a valid recipe (e.g. alpha_miss > alpha_use + lam), before any trial runs."""
    for point in grid_points(dims) if cfg.sweep.search == "grid" else []:
        try:
            apply_params(cfg, point)
        except ValueError as e:
            raise ConfigError(f"sweep.space: the grid point {point} is not a valid recipe: {e}") from e


def param_space(cfg: RecipeConfig, dims: list[Dimension]) -> dict[str, Any]:
    """Ray Tune's space: grid_search of the values, or choice / (log)uniform for random search."""
    from ray import tune

    if cfg.sweep.search == "grid":
        return {d.key: tune.grid_search(list(d.values)) for d in dims}
    return {d.key: tune.choice(list(d.values)) if d.values else
            (tune.loguniform if d.log else tune.uniform)(d.low, d.high) for d in dims}


def reference_points(cfg: RecipeConfig, setup: TrialSetup) -> dict[str, dict]:
    """Low-res only and full-res only (the base model, as the paper's rows) and the SFT policy the
    trials start from, on the sweep's split; cached in ``references.json``."""
    cache = Path(setup.sweep_dir) / "references.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from awares_rl.evaluate import evaluate

    ev = replace(cfg.eval, n=cfg.sweep.eval_n)
    base = evaluate(replace(cfg, eval=replace(ev, modes=["low", "full"])), base_model(cfg), setup.eval_data)["summary"]
    sft = evaluate(replace(cfg, eval=replace(ev, modes=["policy"])), setup.start_model, setup.eval_data,
                   setup.labels)["summary"]["policy"]
    refs = {"low-res only": base["low"], "full-res only": base["full"], "SFT (start)": sft}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(refs, indent=1))
    return refs


def trial_rows(grid) -> list[dict[str, Any]]:
    """One row per trial of a Ray Tune ResultGrid: its result, or its params and error."""
    from awares_rl.sweep.trial import clean_params, trial_key, trial_label

    rows = []
    for res in grid:
        params = clean_params(res.config)
        if res.error is not None:
            lines = [ln for ln in str(res.error).splitlines() if ln.strip()]
            rows.append({"trial": trial_key(params), "label": trial_label(params), "params": params,
                         "status": "error", "error": lines[-1] if lines else repr(res.error)})
        else:
            metrics = res.metrics
            rows.append({**{k: metrics.get(k) for k in ("trial", "label", "params", "n", "grpo_s", "eval_s", "cached")},
                         **{k: metrics.get(k) for k in RESULT_KEYS}, "status": "cached" if metrics.get("cached") else "ok"})
    return sorted(rows, key=lambda r: r["label"])


def rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("label", "status") else "right")
    for r in rows:
        cells = [r.get(c) for c in COLUMNS]
        table.add_row(*("-" if v is None else f"{v:.3f}" if c in ("rtr", "crop_jaccard") else f"{v:.1f}"
                        if isinstance(v, float) else str(v) for c, v in zip(COLUMNS, cells)))
        if r.get("error"):
            table.add_row("", f"[red]{r['error'][:160]}[/red]", *[""] * (len(COLUMNS) - 2))
    return table


def _console() -> Console:
    """Rich at the terminal's width; 160 columns in a log file (rich's 80 squeezes the table)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def live_table_callback(total: int):
    """A Ray Tune callback that prints the table of finished trials each time one ends (it holds
    no Console: Tune pickles its callbacks with the experiment)."""
    from ray.tune import Callback

    class LiveTable(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            r = dict(trial.last_result)
            self.rows.append({**r, "status": "cached" if r.get("cached") else "ok"})
            self._print()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            from awares_rl.sweep.trial import trial_label

            self.rows.append({"label": trial_label(trial.config), "status": "error",
                              "error": f"see {trial.local_path}/error.txt"})
            self._print()

        def _print(self) -> None:
            _console().print(rows_table(self.rows, f"sweep: {len(self.rows)} of {total} trials finished"))

    return LiveTable()


def write_outputs(cfg: RecipeConfig, rows: list[dict], refs: dict[str, dict], max_rtr: float | None,
                  min_accuracy: float | None, seconds: float) -> dict[str, Any]:
    """trials.csv, pareto.json, pareto.png and the W&B run ``<name>-sweep-<sweep>``; returns pareto.json's content."""
    from awares_rl.plots import pareto_plot
    from awares_rl.tracking import stage_tracker

    out = sweep_dir(cfg)
    good = [r for r in rows if r["status"] != "error"]
    points = [(r["accuracy"], r["rtr"]) for r in good]
    front = pareto_front(points)
    pick = None
    if max_rtr is not None or min_accuracy is not None:
        i = recommend(points, max_rtr=max_rtr, min_accuracy=min_accuracy)
        pick = None if i is None else good[i]
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        keys = sorted({k for r in rows for k in r["params"]})
        w.writerow(["trial", *keys, "status", *RESULT_KEYS, "grpo_s", "eval_s", "error"])
        for r in rows:
            w.writerow([r["trial"], *(r["params"].get(k) for k in keys), r["status"],
                        *(r.get(k) for k in RESULT_KEYS), r.get("grpo_s"), r.get("eval_s"), r.get("error", "")])
    ref_points = {name: (s["accuracy"], s["rtr"]) for name, s in refs.items()}
    png = pareto_plot([(r["label"], r["accuracy"], r["rtr"]) for r in good], front, ref_points, out / "pareto.png",
                      f"{cfg.run.name}: {len(good)} trials x {cfg.sweep.grpo_steps} GRPO steps ({cfg.sweep.eval_split})")
    report = {"trials": rows, "front": [good[i]["trial"] for i in front], "references": refs,
              "target": {"max_rtr": max_rtr, "min_accuracy": min_accuracy},
              "recommended": pick, "space": cfg.sweep.space, "search": cfg.sweep.search, "seconds": seconds}
    (out / "pareto.json").write_text(json.dumps(report, indent=1))
    with stage_tracker(cfg, f"sweep-{cfg.sweep.name}", out) as tracker:
        cols = ["trial", "label", "status", *RESULT_KEYS]
        tracker.log_table("sweep", cols, [[r.get(c) for c in cols] for r in rows], {"pareto_png": png})
    return report


def run_sweep(cfg: RecipeConfig, trials: RecipeConfig, max_rtr: float | None = None,
              min_accuracy: float | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe's sweep; returns pareto.json's content. ``trials`` is the
    recipe with ``sweep.overrides`` applied (every trial starts from it)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from awares_rl.grpo import grpo_cpus, start_local_ray

    if min_accuracy is not None and 0 < min_accuracy <= 1:
        min_accuracy *= 100  # 0.95 and 95 both mean 95 %
    sw, dims = cfg.sweep, search_space(cfg.sweep)
    check_grid(cfg, dims)
    setup, console, t0 = trial_setup(cfg, trials), _console(), time.perf_counter()
    console.print(f"[bold]sweep {sw.name}[/bold]: {sw.trials} trials ({sw.search}) x {sw.grpo_steps} GRPO steps "
                  f"from {setup.start_model}, evaluated on {sw.eval_split} -> {setup.sweep_dir}")
    refs = reference_points(cfg, setup)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials read the recipe's relative paths
    start_local_ray((grpo_cpus(setup.base) + TRIAL_CPU) * sw.max_concurrent)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trial, setup=setup), {"cpu": TRIAL_CPU}),
        param_space=param_space(cfg, dims),
        tune_config=tune.TuneConfig(num_samples=1 if sw.search == "grid" else sw.trials, search_alg=
                                    BasicVariantGenerator(max_concurrent=sw.max_concurrent, random_state=cfg.run.seed)),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=setup.sweep_dir,
                                  verbose=0, log_to_file=True, callbacks=[live_table_callback(sw.trials)],
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
    rows = trial_rows(tuner.fit())
    report = write_outputs(cfg, rows, refs, max_rtr, min_accuracy, time.perf_counter() - t0)
    console.print(rows_table(rows, f"sweep {sw.name}: {len(rows)} trials in {report['seconds'] / 60:.1f} min"))
    _print_pick(console, report)
    console.print(f"table, front and plot in {setup.sweep_dir} (trials.csv, pareto.json, pareto.png)")
    return report


def _print_pick(console: Console, report: dict[str, Any]) -> None:
    target = {k: v for k, v in report["target"].items() if v is not None}
    if not target:
        return
    pick = report["recommended"]
    if pick is None:
        console.print(f"[yellow]no trial meets {target}[/yellow]")
    else:
        console.print(f"recommended for {target}: [bold]{pick['label']}[/bold] "
                      f"(accuracy {pick['accuracy']:.1f}%, RTR {pick['rtr']:.3f})")
