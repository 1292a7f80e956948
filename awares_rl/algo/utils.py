"""Masked reductions and log-prob helpers shared by the RL and SFT losses.

Shift convention (Hugging Face's, used throughout ``awares_rl.algo``): per-token tensors are
aligned with ``input_ids`` (B, T), and the logits at position t predict the token at t + 1. So
``token_logprobs(logits, input_ids)[:, t] = log p(input_ids[:, t + 1] | input_ids[:, :t + 1])``,
shape (B, T - 1), lines up with ``mask[:, 1:]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch

T = TypeVar("T")


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is non-zero.

    ``mask`` (same shape as ``x``) is bool or float; a float mask gives the weighted mean
    ``sum(x * m) / sum(m)``. ``dim=None`` reduces everything to a scalar, otherwise only ``dim``.
    Values outside the mask never reach the result (not even inf/nan), and a slice with an empty
    mask gives 0 rather than nan, so an all-padding micro-batch does not poison a step.
    """
    check_same_shape(x=x, mask=mask)
    weights = mask.to(x.dtype)
    total = torch.where(mask != 0, x * weights, 0.0).sum(dim=dim)
    count = weights.sum(dim=dim)
    return total / torch.where(count != 0, count, 1.0)  # count == 0 implies total == 0


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``logits`` (B, T, V), ``input_ids`` (B, T) -> (B, T-1).

    ``out[:, t] = logits[:, t, input_ids[:, t+1]] - logsumexp(logits[:, t, :])``, in float32.
    Equal to ``log_softmax(logits)[:, :-1].gather(-1, input_ids[:, 1:])`` without materialising
    the (B, T, V) log-softmax; the logsumexp runs one sequence at a time so a bf16 batch never
    holds a full float32 copy. Every ``input_ids[:, 1:]`` entry must be a valid vocabulary id.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logprobs wants logits (B, T, V) and input_ids (B, T); got "
            f"{tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    logits = logits[:, :-1]
    picked = logits.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1).float()
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return picked - lse


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical at each position: ``logits`` (B, T, V) -> (B, T).

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v`` (= -sum p log p), computed in the logits'
    dtype; the logits must be finite.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming every tensor unless all have the shape of the first one."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these must all have the same shape")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or a ValueError that lists the valid names of ``what``."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}") from None
