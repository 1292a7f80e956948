"""Training objectives as the LearnerWorker runs them: a micro-batch SUM over a GLOBAL normaliser.

A step's batch is split across data-parallel workers and, on each, into micro-batches. To give
the same gradient whatever the split (1 worker or 2, micro-batch 1 or 8), an objective returns
the micro-batch's *sum* of per-token losses and its share of the normaliser; the worker adds the
shares over all micro-batches and all workers, then divides:

    L = sum_{micro-batches m} loss_sum(m) / sum_m denominator(m)

For SFT with normalize="weights" this is exactly ``awares_rl.algo.weighted_token_nll`` on the
whole batch at once (tests/test_learner.py checks it). A GRPO objective follows the same shape:
e.g. token-mean PPO-clip -> denominator = action tokens; seq-mean-token-mean -> sequences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

NORMALIZATIONS = ("weights", "tokens")


class Objective(Protocol):
    """What ``LearnerWorker.train_step`` optimises."""

    def targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, T-1) bool: positions whose next-token logprob the loss needs."""
        ...

    def denominator(self, batch: Mapping[str, torch.Tensor]) -> float:
        """This micro-batch's share of the global normaliser (from the batch alone)."""
        ...

    def __call__(
        self, logprobs: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss summed over the micro-batch (scalar, with grad), stats to SUM across micro-batches)."""
        ...


@dataclass(frozen=True)
class WeightedNLL:
    """The AwaRes cold-start SFT loss (paper: w = 5 on the tool-call turn, 1 elsewhere).

    With S the targets (weight != 0) of the whole step and nll_t = -log p(token t)::

        normalize="weights":  L = sum_S w_t * nll_t / sum_S w_t
        normalize="tokens":   L = sum_S w_t * nll_t / |S|

    matching ``awares_rl.algo.weighted_token_nll`` (its shift: weights mark the target tokens).
    """

    normalize: str = "weights"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")

    def targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["loss_weights"][:, 1:] != 0

    def denominator(self, batch: Mapping[str, torch.Tensor]) -> float:
        w = batch["loss_weights"][:, 1:]
        return float(w.sum() if self.normalize == "weights" else (w != 0).sum())

    def __call__(
        self, logprobs: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = batch["loss_weights"][:, 1:].to(logprobs.dtype)
        nll = -logprobs
        loss_sum = (w * nll).sum()
        mask = w != 0
        stats = {"nll_sum": float(nll[mask].detach().sum()), "target_tokens": float(mask.sum()),
                 "weight_sum": float(w.detach().sum())}
        return loss_sum, stats
