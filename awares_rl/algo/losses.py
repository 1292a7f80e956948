"""The GRPO policy loss: PPO-clip over action tokens, optional KL to the reference, optional TIS.

Papers: PPO (Schulman et al., arXiv 1707.06347); GRPO (DeepSeekMath, arXiv 2402.03300); separate
low/high clip ("clip-higher", DAPO arXiv 2503.14476); Dr. GRPO aggregation (arXiv 2503.20783);
truncated importance sampling against the rollout engine (Yao et al., "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training", 2025; verl's ``tis_imp_ratio_cap``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from awares_rl.algo.kl import KL_ESTIMATORS, kl_penalty
from awares_rl.algo.utils import check_same_shape, lookup, masked_mean


def _token_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> torch.Tensor:
    return masked_mean(x, mask)


def _seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> torch.Tensor:
    return masked_mean(x, mask, dim=-1).mean()


def _dr_grpo(x: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> torch.Tensor:
    return torch.where(mask, x, 0.0).sum() / (x.shape[0] * (max_len or x.shape[1]))


# name -> fn(per_token (B, T), mask (B, T) bool, max_len) -> scalar
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]] = {
    "token-mean": _token_mean,  # TRL "bnpo", verl/OpenRLHF default; long answers weigh more
    "seq-mean-token-mean": _seq_mean_token_mean,  # GRPO paper, TRL "grpo"
    "dr-grpo": _dr_grpo,  # Dr. GRPO, TRL "dr_grpo": constant normaliser, no length bias
}


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", max_len: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) over the action tokens ``mask`` (B, T) to a scalar.

    With S the masked tokens and S_b those of sequence b::

        "token-mean":           sum_{S} l / |S|
        "seq-mean-token-mean":  (1/B) sum_b (sum_{S_b} l / |S_b|)   (an empty row counts as 0)
        "dr-grpo":              sum_{S} l / (B * max_len)            (max_len defaults to T)

    For "dr-grpo" pass a constant ``max_len`` (the generation budget): the default T follows
    each batch's padding and brings back a (milder) length dependence.
    """
    fn = lookup(AGGREGATIONS, agg, "loss aggregation")
    check_same_shape(per_token=per_token, mask=mask)
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be a positive token count, got {max_len}")
    return fn(per_token, mask.bool(), max_len)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    max_len: int | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    rollout_logp: torch.Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip GRPO loss over action tokens; returns ``(loss, stats)``.

    Shapes: ``logp`` (learner, with grad), ``old_logp`` (policy that sampled, per the learner),
    ``mask`` (1 on action tokens), optional ``ref_logp`` and ``rollout_logp`` (the rollout
    engine's own logprobs): all (B, T); ``advantages`` (B,), one per episode. Per token::

        r   = exp(logp - old_logp)
        pg  = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A) * w
        w   = min(exp(old_logp - rollout_logp), tis_cap)      (detached; 1 without TIS)
        l   = pg + kl_coef * kl_penalty(logp, ref_logp, kl_kind)
        loss = aggregate(l, mask, agg, max_len)

    Only ``logp`` carries gradient. Masked positions are zeroed before any arithmetic, so
    padding, even inf/nan, changes neither the loss nor its gradient. ``rollout_logp`` without
    ``tis_cap`` only logs the engine/learner mismatch. ``stats`` holds detached scalars:
    pg_loss, clip_fraction(_low/_high), approx_kl (k3 of KL(old || new)), ratio_mean,
    ratio_max; kl_ref with ``ref_logp``; rollout_kl, tis_weight_mean, tis_capped_fraction
    with ``rollout_logp``.
    """
    _check_policy_args(logp, old_logp, advantages, mask, ref_logp, rollout_logp)
    _check_policy_options(clip_low, clip_high, kl_coef, kl_kind, ref_logp, rollout_logp, tis_cap)
    mask = mask.bool()
    logp, old_logp = _zero_padding(logp, mask), _zero_padding(old_logp.detach(), mask)
    adv = advantages.detach().float().unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats = _ratio_stats(ratio.detach(), adv, mask, clip_low, clip_high)
    stats["approx_kl"] = masked_mean(kl_penalty(old_logp, logp.detach(), "k3"), mask)
    if rollout_logp is not None:
        weight, tis_stats = _tis_weight(old_logp, _zero_padding(rollout_logp, mask), mask, tis_cap)
        per_token = per_token * weight
        stats.update(tis_stats)
    loss = aggregate(per_token, mask, agg, max_len)
    stats["pg_loss"] = loss.detach()
    if ref_logp is not None:
        kl = kl_penalty(logp, _zero_padding(ref_logp.detach(), mask), kl_kind)
        stats["kl_ref"] = masked_mean(kl.detach(), mask)
        if kl_coef:
            loss = loss + kl_coef * aggregate(kl, mask, agg, max_len)
    return loss, stats


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x.float(), 0.0)


def _ratio_stats(
    ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float
) -> dict[str, torch.Tensor]:
    # A token is clipped when the clipped term wins the min, i.e. its gradient is zero.
    low = (ratio < 1.0 - clip_low) & (adv < 0)
    high = (ratio > 1.0 + clip_high) & (adv > 0)
    return {
        "clip_fraction": masked_mean((low | high).float(), mask),
        "clip_fraction_low": masked_mean(low.float(), mask),
        "clip_fraction_high": masked_mean(high.float(), mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": torch.where(mask, ratio, float("-inf")).max(),
    }


def _tis_weight(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, tis_cap: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated IS weight min(pi_old / pi_rollout, cap), (B, T), detached, plus its stats."""
    rollout_logp = rollout_logp.detach()
    stats = {"rollout_kl": masked_mean(kl_penalty(rollout_logp, old_logp, "k3"), mask)}
    if tis_cap is None:
        return torch.ones_like(old_logp), stats
    raw = torch.exp(old_logp - rollout_logp)
    weight = raw.clamp(max=tis_cap)
    stats["tis_weight_mean"] = masked_mean(weight, mask)
    stats["tis_capped_fraction"] = masked_mean((raw > tis_cap).float(), mask)
    return weight, stats


def _check_policy_args(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    rollout_logp: torch.Tensor | None,
) -> None:
    optional = {"ref_logp": ref_logp, "rollout_logp": rollout_logp}
    present = {name: t for name, t in optional.items() if t is not None}
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask, **present)
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be (B,) = ({logp.shape[0]},), one per episode; "
            f"got {tuple(advantages.shape)}"
        )


def _check_policy_options(
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    kl_kind: str,
    ref_logp: torch.Tensor | None,
    rollout_logp: torch.Tensor | None,
    tis_cap: float | None,
) -> None:
    if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    lookup(KL_ESTIMATORS, kl_kind, "KL estimator")
    if kl_coef and ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference model's logprobs)")
    if tis_cap is not None and (rollout_logp is None or tis_cap <= 0):
        raise ValueError(f"tis_cap={tis_cap} needs rollout_logp and a positive cap")
