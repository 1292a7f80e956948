"""Group-relative advantages (GRPO, DeepSeekMath arXiv 2402.03300; Dr. GRPO arXiv 2503.20783).

Episodes are laid out group-contiguous: N prompts x G episodes, prompt i owning the rows
``i * G .. i * G + G - 1``. With outcome rewards only, one advantage per episode is broadcast
over its action tokens by the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from awares_rl.algo.utils import lookup


def _group_std(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    # torch.std is Bessel-corrected (divides by G - 1), exactly as TRL's GRPOTrainer, verl's
    # compute_grpo_outcome_advantage and OpenRLHF's group_norm do.
    return grouped.std(dim=-1, keepdim=True) + eps


def _no_scale(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.ones_like(grouped[:, :1])


ADVANTAGE_SCALES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "group": _group_std,  # GRPO: divide by the group's std
    "none": _no_scale,  # Dr. GRPO: mean-centred only
}


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantage of each episode: ``rewards`` (N*G,) -> (N*G,), float32.

    For episode j of group i, with the group's mean m_i and unbiased std s_i (divisor G - 1)::

        scale="group":  A_ij = (r_ij - m_i) / (s_i + eps)      (GRPO)
        scale="none":   A_ij =  r_ij - m_i                     (Dr. GRPO)

    A group whose rewards are all equal gets exactly A = 0 (no learning signal): the statistics
    are taken in float64, where the mean of G equal float32 values is exact. In float32 (TRL,
    verl) a group of 0.7s has a mean off by ~6e-8 and a std of ~6e-8, giving A ~ 0.05 of noise.
    ``scale="group"`` needs G >= 2 (the unbiased std of one sample is undefined). No gradient
    flows (rewards are data).
    """
    scale_fn = lookup(ADVANTAGE_SCALES, scale, "advantage scale")
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D (N*G,) laid out group-contiguous, got shape {tuple(rewards.shape)}"
        )
    min_size = 2 if scale == "group" else 1
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size} for scale={scale!r}, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}: "
            "pass N prompts x G episodes, group-contiguous"
        )
    grouped = rewards.detach().double().view(-1, group_size)
    centred = grouped - grouped.mean(dim=-1, keepdim=True)
    return (centred / scale_fn(grouped, eps)).view(-1).float()


def informative_groups(rewards: torch.Tensor, group_size: int) -> list[bool]:
    """Which of the groups in ``rewards`` (N*G,), group-contiguous, carry a learning signal: their
    rewards are not all equal (DAPO's dynamic sampling, arXiv 2503.14476, keeps only those). A
    group of equal rewards has advantage 0 under every ``ADVANTAGE_SCALES`` entry."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.detach().double().view(-1, group_size)
    return (grouped != grouped[:, :1]).any(dim=-1).tolist()
