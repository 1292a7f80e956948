"""``awares-rl scale RUN_DIR --rollout-workers N``: resize a running GRPO job's rollout pool."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_scale(args: argparse.Namespace) -> int:
    from awares_rl.rollout.control import request_scale

    status = request_scale(Path(args.run_dir), args.rollout_workers, wait_s=args.wait_s)
    print(f"{args.run_dir}: {status['workers']} rollout workers from GRPO step {status['step']} on")
    return 0


def add_scale_parser(sub: argparse._SubParsersAction) -> None:
    """``awares-rl scale RUN_DIR --rollout-workers N [--wait-s S]``."""
    p = sub.add_parser("scale", help="change a running GRPO job's rollout workers at its next step boundary")
    p.add_argument("run_dir", help="the run's directory (run.out_dir/run.name, e.g. runs/tiny_cpu)")
    p.add_argument("--rollout-workers", type=int, required=True, help="rollout workers from the next step on (>= 1)")
    p.add_argument("--wait-s", type=float, default=600.0, help="how long to wait for the step boundary")
    p.set_defaults(func=run_scale)
