"""The ``awares-rl`` command: one sub-command per stage of the pipeline."""

from __future__ import annotations

import argparse
import sys


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="recipes/tiny_cpu.yaml", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. rollout.group_size=4")


def _episodes(args: argparse.Namespace) -> int:
    from awares_rl.commands.episodes import run_episodes

    return run_episodes(args.recipe, args.overrides, n=args.n, checkpoint=args.checkpoint,
                        group_size=args.group_size, split=args.split)


def _show_config(args: argparse.Namespace) -> int:
    import yaml

    from awares_rl.config import load_recipe
    from awares_rl.core.config_io import to_dict

    print(yaml.safe_dump(to_dict(load_recipe(args.recipe, args.overrides)), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awares-rl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logs, and the libraries' (Ray, vLLM, DeepSpeed, W&B) on the terminal too "
                             "(also AWARES_RL_VERBOSE=1); otherwise `run` keeps them in <run>/logs/<stage>.log")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("episodes", help="run AwaRes episodes and print them as a table")
    _add_recipe_args(p)
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--group-size", type=int, default=1, help="episodes per sample")
    p.add_argument("--split", default="val", help="data split to draw samples from")
    p.add_argument("--checkpoint", default=None, help="model dir (default: the run's latest stage)")
    p.set_defaults(func=_episodes)

    p = sub.add_parser("config", help="validate a recipe and print it with overrides applied")
    _add_recipe_args(p)
    p.set_defaults(func=_show_config)

    from awares_rl.commands.cluster import add_cluster_parsers
    from awares_rl.commands.data import add_data_parsers
    from awares_rl.commands.run import add_pretrain_parser, add_run_parser
    from awares_rl.commands.scale import add_scale_parser
    from awares_rl.commands.serve_reward import add_serve_reward_parser
    from awares_rl.commands.stages import (
        add_eval_parser,
        add_grpo_parser,
        add_sft_parser,
        add_sweep_parser,
    )

    for adder in (add_data_parsers, add_pretrain_parser, add_sft_parser, add_grpo_parser, add_eval_parser,
                  add_run_parser, add_sweep_parser, add_serve_reward_parser, add_cluster_parsers, add_scale_parser):
        adder(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from awares_rl.commands.console import setup_logging
    from awares_rl.core.config_io import ConfigError

    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"awares-rl: config error: {e}", file=sys.stderr)
        return 2
    except input_errors() as e:  # a bad file: its message names it and the fix, no traceback
        print(f"awares-rl: error: {e}", file=sys.stderr)
        return 1


def input_errors() -> tuple[type[Exception], ...]:
    """The errors of bad user input (data, images, checkpoints), each naming the input and the fix."""
    from awares_rl.checkpoint import CheckpointFormatError
    from awares_rl.core.images import ImageError
    from awares_rl.core.sample import SampleError
    from awares_rl.core.trajectory import TrajectoryError
    from awares_rl.rollout.control import ScaleError
    from cluster.submit import SubmitError
    from data_pipeline.datasets import ConvertError

    return SampleError, TrajectoryError, ImageError, CheckpointFormatError, ConvertError, SubmitError, ScaleError


if __name__ == "__main__":
    sys.exit(main())
