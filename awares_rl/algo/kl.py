"""Per-token KL estimators between the policy and the frozen reference (the cold-start SFT model).

J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html. With
tokens sampled from the policy pi and d = log pi(x) - log pi_ref(x), each kind estimates
KL(pi || pi_ref):

    k1 = d                         unbiased, per-token sign either way, high variance
    k2 = d^2 / 2                   biased, >= 0, low variance
    k3 = exp(-d) + d - 1           unbiased, >= 0, low variance ("low_var_kl" in verl);
                                   capped at 10 (d clamped to +-20) as in verl and OpenRLHF

k3 is what GRPO puts in the loss (DeepSeekMath eq. 4; TRL and verl's ``low_var_kl``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from awares_rl.algo.utils import check_same_shape, lookup

# As verl and OpenRLHF do: clamp d so exp(-d) cannot overflow, and cap k3 at 10 so one runaway
# token (where the gradient is cut) cannot dominate the KL term.
_K3_MAX_LOG_RATIO = 20.0
_K3_MAX = 10.0


def _k1(d: torch.Tensor) -> torch.Tensor:
    return d


def _k2(d: torch.Tensor) -> torch.Tensor:
    return 0.5 * d.square()


def _k3(d: torch.Tensor) -> torch.Tensor:
    d = d.clamp(-_K3_MAX_LOG_RATIO, _K3_MAX_LOG_RATIO)
    return (torch.exp(-d) + d - 1.0).clamp(max=_K3_MAX)


# name -> fn(d = logp - ref_logp) -> per-token estimate
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate: ``logp``, ``ref_logp`` (B, T) -> (B, T), float32.

    ``kind`` is one of KL_ESTIMATORS ("k1", "k2", "k3"; see the module docstring). Gradient flows
    through both arguments; detach ``ref_logp`` (it is normally data). Padding positions are
    not masked here: reduce with ``masked_mean``.
    """
    estimator = lookup(KL_ESTIMATORS, kind, "KL estimator")
    check_same_shape(logp=logp, ref_logp=ref_logp)
    return estimator(logp.float() - ref_logp.float())


@torch.no_grad()
def kl_in_reward(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kind: str = "k1",
) -> torch.Tensor:
    """Rewards with the KL penalty folded in ("KL in the reward", InstructGPT / OpenRLHF / verl).

    ``rewards`` (B,), ``logp``/``ref_logp``/``mask`` (B, T) -> (B,)::

        r'_b = r_b - beta * sum_t mask_bt * kl_bt

    This is the per-token shaping ``-beta * kl_t`` summed over the action tokens, which is all an
    outcome-only advantage (``group_advantages``) sees. Apply it before ``group_advantages``, and
    keep ``kl_coef=0`` in ``policy_loss`` so the KL is not counted twice. k1 is the usual choice
    here (its sum over tokens is an unbiased sequence-level KL). Computed without gradient.
    """
    if rewards.shape != logp.shape[:1]:
        raise ValueError(
            f"rewards must be (B,) = ({logp.shape[0]},) to match logp (B, T), "
            f"got {tuple(rewards.shape)}"
        )
    check_same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    kl = torch.where(mask.bool(), kl_penalty(logp, ref_logp, kind), 0.0)
    return rewards.float() - beta * kl.sum(dim=-1)
