"""``awares-rl sft | grpo | eval | sweep``: load the recipe, run one stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from awares_rl.config import RecipeConfig, load_recipe
from awares_rl.core.run_paths import RunPaths


def _add_recipe_args(p: argparse.ArgumentParser, example: str, recipe_help: str = "recipe YAML") -> None:
    p.add_argument("--recipe", default="recipes/tiny_cpu.yaml", help=recipe_help)
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")


def run_sft(recipe: str, overrides: list[str]) -> Path:
    """Load the recipe and train; returns the SFT model directory."""
    from awares_rl.sft import SFTTrainer

    out = SFTTrainer(load_recipe(recipe, overrides)).fit()
    print(f"SFT model written to {out}")
    return out


def add_sft_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``awares-rl sft --recipe R [key=value ...]``."""
    p = subparsers.add_parser("sft", help="cold-start SFT on the run's trajectories (tool-call turn weighted)")
    _add_recipe_args(p, "sft.steps=50")
    p.set_defaults(func=lambda args: run_sft(args.recipe, args.overrides) and 0)
    return p


def run_grpo(recipe: str, overrides: list[str]) -> Path:
    """Load the recipe and train; returns the GRPO model directory."""
    from awares_rl.grpo import GRPOTrainer

    out = GRPOTrainer(load_recipe(recipe, overrides)).fit()
    print(f"GRPO model written to {out}")
    return out


def add_grpo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``awares-rl grpo --recipe R [key=value ...]``."""
    p = subparsers.add_parser("grpo", help="multi-turn GRPO from the SFT model (Ray rollout/reward/learner)")
    _add_recipe_args(p, "grpo.steps=10")
    p.set_defaults(func=lambda args: run_grpo(args.recipe, args.overrides) and 0)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a split (or ``--data``); the report goes to ``<run>/eval/``."""
    from awares_rl.evaluate import evaluate, results_table
    from awares_rl.workspace import ensure_data

    cfg = load_recipe(args.recipe, args.overrides)
    checkpoint = Path(args.checkpoint) if args.checkpoint else RunPaths(cfg.run.dir).latest_model()
    if checkpoint is None:
        raise SystemExit("awares-rl eval: no --checkpoint and no model in the run directory")
    data = Path(args.data) if args.data else ensure_data(cfg, cfg.eval.split)
    report = evaluate(cfg, checkpoint, data, args.trajectories)
    out = Path(args.out) if args.out else RunPaths(cfg.run.dir).logs("eval") / f"{checkpoint.name}_{data.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    Console().print(results_table(report["summary"]))
    print(f"results written to {out}")
    return 0


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``awares-rl eval --checkpoint DIR --data FILE.jsonl [--trajectories FILE] [key=value ...]``."""
    p = subparsers.add_parser("eval", help="accuracy vs RTR: low-res, full-res and the AwaRes policy")
    p.add_argument("--checkpoint", default=None, help="model dir (default: the run's newest stage)")
    p.add_argument("--data", default=None, help="sample or trajectory JSONL (default: the eval.split of the run)")
    p.add_argument("--trajectories", default=None, help="trajectory JSONL whose needs_crop labels to score against")
    p.add_argument("--out", default=None, help="JSON report (default: <run>/eval/<checkpoint>_<data>.json)")
    _add_recipe_args(p, "eval.n=100", "recipe YAML (engine, judges, eval.*)")
    p.set_defaults(func=run_eval)
    return p


def sweep_recipes(recipe: str, overrides: list[str]) -> tuple[RecipeConfig, RecipeConfig]:
    """The sweep's recipe, and the trials' (``sweep.overrides`` applied on top)."""
    cfg = load_recipe(recipe, overrides)
    trials = load_recipe(recipe, [*overrides, *cfg.sweep.overrides]) if cfg.sweep.overrides else cfg
    return cfg, trials


def run_sweep_recipe(recipe: str, overrides: list[str], max_rtr: float | None = None,
                     min_accuracy: float | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe's sweep; returns pareto.json's content."""
    from awares_rl.sweep.run import run_sweep

    return run_sweep(*sweep_recipes(recipe, overrides), max_rtr=max_rtr, min_accuracy=min_accuracy)


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """``awares-rl sweep --recipe R [--max-rtr X | --min-accuracy Y] [key=value ...]``."""
    p = sub.add_parser("sweep", help="reward-weight sweep on Ray Tune from the SFT model: the accuracy/RTR front")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--max-rtr", type=float, default=None, help="recommend the most accurate trial within this RTR")
    target.add_argument("--min-accuracy", type=float, default=None,
                        help="recommend the cheapest trial with at least this accuracy (95 or 0.95: 95 %%)")
    _add_recipe_args(p, "sweep.grpo_steps=5", "recipe YAML (its sweep: section)")
    p.set_defaults(func=lambda a: run_sweep_recipe(a.recipe, a.overrides, a.max_rtr, a.min_accuracy) and 0)
