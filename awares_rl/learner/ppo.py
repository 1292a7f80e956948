"""The GRPO policy objective as the LearnerWorker runs it (a micro-batch SUM over a global
normaliser, see objective.py), built on ``awares_rl.algo.policy_loss``.

For each aggregation the micro-batch loss is ``policy_loss(...)`` (a mean) times its own count,
and the count is the micro-batch's share of the normaliser, so the step's loss equals
``policy_loss`` over the whole batch whatever the data-parallel / micro-batch split:

    token-mean:           mean over action tokens   -> count = action tokens
    seq-mean-token-mean:  mean over sequences        -> count = sequences
    dr-grpo:              sum / (B * max_len)        -> count = sequences

dr-grpo needs a constant ``max_len`` for that: its default, the micro-batch's padded width, changes
with the split. ``old_logprobs`` are the learner's own logprobs of the sequences before the first
of a rollout batch's optimizer steps; without them (one step per batch) ``logprobs.detach()``
stands in, the ratio is 1 and nothing is clipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from awares_rl.algo import policy_loss

_MEAN_STATS = ("clip_fraction", "clip_fraction_low", "clip_fraction_high", "approx_kl", "ratio_mean",
               "kl_ref", "rollout_kl", "tis_weight_mean", "tis_capped_fraction")


@dataclass(frozen=True)
class PPOClip:
    """PPO-clip with separate low/high epsilon, optional KL to the reference and TIS."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    agg: str = "token-mean"
    max_len: int | None = None  # dr-grpo's constant length (None: each micro-batch's width, split-dependent)
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    tis_cap: float | None = None

    def targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["loss_weights"][:, 1:] != 0

    def denominator(self, batch: Mapping[str, torch.Tensor]) -> float:
        if self.agg == "token-mean":
            return float(self.targets(batch).sum())
        return float(batch["input_ids"].shape[0])

    def __call__(self, logprobs: torch.Tensor, batch: Mapping[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        mask = self.targets(batch)
        old = batch["old_logprobs"][:, 1:] if "old_logprobs" in batch else logprobs.detach()
        rollout = batch["rollout_logprobs"][:, 1:] if "rollout_logprobs" in batch else None
        ref = batch["ref_logprobs"][:, 1:] if "ref_logprobs" in batch else None
        if self.kl_coef and ref is None:
            raise ValueError("PPOClip.kl_coef > 0 needs ref_logprobs on every sequence (a reference model)")
        loss, stats = policy_loss(
            logprobs, old, batch["advantages"], mask, self.clip_low, self.clip_high, self.agg,
            self.max_len, ref_logp=ref, kl_coef=self.kl_coef,
            kl_kind=self.kl_kind, rollout_logp=rollout, tis_cap=self.tis_cap if rollout is not None else None,
        )
        tokens = float(mask.sum())
        out = {f"{k}_sum": float(stats[k]) * tokens for k in _MEAN_STATS if k in stats}
        out["ratio_max_sum"] = float(stats["ratio_max"])  # summed over micro-batches: an upper bound
        out["action_tokens"] = tokens
        if rollout is not None:  # Monte-Carlo entropy estimate: -E[log p(sampled token)]
            out["entropy_mc_sum"] = float(-(rollout * mask).sum())
        return loss * self.denominator(batch), out


def finish_stats(metrics: dict[str, float]) -> dict[str, float]:
    """Turn the summed ``*_sum`` stats of a step into per-action-token means."""
    tokens = max(metrics.get("action_tokens", 0.0), 1.0)
    out = {k: v for k, v in metrics.items() if not k.endswith("_sum")}
    out.update({k[:-4]: v / tokens for k, v in metrics.items() if k.endswith("_sum") and k != "loss_sum"
                and k != "ratio_max_sum"})
    return out


# Per-batch counts of a train_step: pooled over a GRPO step's optimizer steps, then per pass.
_COUNTS = ("sequences", "tokens", "action_tokens", "denominator")


def pool_steps(steps: Sequence[Mapping[str, float]], epochs: int = 1) -> dict[str, float]:
    """One GRPO step's learner metrics from its ``epochs * mini_batches`` train_step results.

    The ``*_sum`` stats are pooled over all the optimizer steps, so e.g. ``clip_fraction`` is the
    clipped share of every action token of every step (``finish_stats``); the counts
    (sequences, tokens, action_tokens, denominator) are per pass over the batch; ``step`` is the
    last optimizer step, ``step_s`` their total; the rest (loss, grad_norm, lr) is averaged.
    One step in, ``finish_stats`` of it out.
    """
    if not steps:
        raise ValueError("pool_steps needs the metrics of at least one optimizer step")
    pooled = {k: sum(s[k] for s in steps) for k in steps[0] if k.endswith("_sum") or k in _COUNTS}
    out = finish_stats(pooled)
    out.update({k: v / epochs for k, v in pooled.items() if k in _COUNTS})
    out.update({k: sum(s[k] for s in steps) / len(steps) for k in steps[0] if k not in pooled})
    out["step"], out["step_s"] = steps[-1]["step"], sum(s["step_s"] for s in steps)
    return out
