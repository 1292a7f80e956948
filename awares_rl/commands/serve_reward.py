"""``awares-rl serve-reward``: run the reward service (HTTP front + Ray actor pool).

export AWARES_REWARD_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
awares-rl serve-reward --recipe recipes/tiny_cpu.yaml reward.num_workers=2 reward.judge=anls
"""

from __future__ import annotations

import argparse
import sys

from reward.config import load_reward_config


def run_serve_reward(args: argparse.Namespace) -> int:
    """Handler of ``awares-rl serve-reward``: blocks until interrupted."""
    from reward.http import serve

    cfg = load_reward_config(args.recipe, args.overrides)
    try:
        serve(cfg, host=args.host, port=args.port, local=args.local)
    except RuntimeError as e:  # no token, no Ray: say so without a traceback
        print(f"awares-rl serve-reward: {e}", file=sys.stderr)
        return 2
    return 0


def add_serve_reward_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve-reward`` on the ``awares-rl`` sub-command parser."""
    p = subparsers.add_parser(
        "serve-reward",
        help="serve the reward (judges + crop cost) over HTTP; needs $AWARES_REWARD_TOKEN",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", default=None, help="recipe YAML whose reward section to use")
    p.add_argument("--host", default=None, help="bind address (default reward.host: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default reward.port: 8008)")
    p.add_argument("--local", action="store_true", help="score in this process, without Ray")
    p.add_argument(
        "overrides", nargs="*", help="reward.key=value overrides, e.g. reward.judge=anls"
    )
    p.set_defaults(func=run_serve_reward)
    return p
