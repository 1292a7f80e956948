"""OpenRLHF ``reward_func`` that forwards to the authenticated reward service.

OpenRLHF posts to a plain ``--remote_rm_url`` without any auth header, so point it at this file
instead: ``--remote_rm_url /path/to/reward/openrlhf_func.py``. Each call goes to
``$AWARES_REWARD_URL`` (default http://127.0.0.1:8008) ``/openrlhf`` with the bearer token from
``$AWARES_REWARD_TOKEN``, and returns tensors, as OpenRLHF's own example reward_func does.
"""

from __future__ import annotations

import os

from reward.client import RewardClient


def reward_func(queries: list[str], prompts: list[str], labels: list, **_: object) -> dict:
    """``{"rewards": R, "scores": R_ans in [0, 1], "extra_logs": {...}}`` as float tensors."""
    import torch

    with RewardClient(os.environ.get("AWARES_REWARD_URL", "http://127.0.0.1:8008")) as client:
        out = client.openrlhf(queries, prompts, labels)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    return {
        "rewards": as_tensor(out["rewards"]),
        "scores": as_tensor(out["scores"]),
        "extra_logs": {k: as_tensor(v) for k, v in out["extra_logs"].items()},
    }
