"""awares_rl.algo's policy loss against TRL, OpenRLHF and verl (tests/algo_references.py) on the
same seeded, ragged batches: loss, gradient and clip fraction."""

from __future__ import annotations

import pytest
import torch

from awares_rl.algo import aggregate, policy_loss
from tests.algo_references import openrlhf_policy_loss, trl_grpo_loss, verl_actor_loss
from tests.test_algo import close, random_batch


def ours(b: dict, **kw) -> tuple[torch.Tensor, dict, torch.Tensor]:
    logp = b["logp"].clone().requires_grad_()
    loss, stats = policy_loss(logp, b["old"], b["adv"], b["mask"], **kw)
    loss.backward()
    return loss, stats, logp.grad


def theirs(fn, b: dict, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = b["logp"].clone().requires_grad_()
    loss, clipfrac = fn(logp, old=b["old"], mask=b["mask"], **kw)
    loss.backward()
    return loss, clipfrac, logp.grad


def assert_parity(mine: tuple, reference: tuple) -> None:
    (loss, stats, grad), (ref_loss, ref_clipfrac, ref_grad) = mine, reference
    assert close(loss, ref_loss), (loss, ref_loss)
    assert close(grad, ref_grad)
    assert close(stats["clip_fraction"], ref_clipfrac)


@pytest.mark.parametrize(
    ("agg", "trl_type"),
    [("token-mean", "bnpo"), ("seq-mean-token-mean", "grpo"), ("dr-grpo", "dr_grpo")],
)
def test_policy_loss_matches_trl(agg: str, trl_type: str) -> None:
    b = random_batch(seed=4)
    mine = ours(
        b,
        clip_low=0.2,
        clip_high=0.28,
        agg=agg,
        max_len=16,
        ref_logp=b["ref"],
        kl_coef=0.04,
        rollout_logp=b["rollout"],
        tis_cap=2.0,
    )
    is_ratio = torch.exp(b["old"] - b["rollout"]).clamp(max=2.0)
    reference = theirs(
        trl_grpo_loss,
        b,
        ref=b["ref"],
        adv=b["adv"],
        eps_low=0.2,
        eps_high=0.28,
        beta=0.04,
        loss_type=trl_type,
        max_len=16,
        is_ratio=is_ratio,
    )
    assert_parity(mine, reference)


@pytest.mark.parametrize(
    ("agg", "token_level"), [("token-mean", True), ("seq-mean-token-mean", False)]
)
def test_policy_loss_matches_openrlhf(agg: str, token_level: bool) -> None:
    b = random_batch(seed=5)
    mine = ours(b, clip_low=0.2, clip_high=0.3, agg=agg)
    adv = b["adv"][:, None].expand_as(b["mask"])  # OpenRLHF broadcasts the outcome to tokens
    reference = theirs(
        openrlhf_policy_loss, b, adv=adv, eps_low=0.2, eps_high=0.3, token_level=token_level
    )
    assert_parity(mine, reference)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_policy_loss_matches_verl(agg: str) -> None:
    b = random_batch(seed=6)
    assert (torch.exp(b["logp"] - b["old"]) < 3.0).all()  # verl's dual-clip (c = 3) stays inactive
    mine = ours(
        b,
        clip_low=0.2,
        clip_high=0.28,
        agg=agg,
        ref_logp=b["ref"],
        kl_coef=0.01,
        rollout_logp=b["rollout"],
        tis_cap=1.5,
    )
    adv = b["adv"][:, None].expand_as(b["mask"])
    reference = theirs(
        verl_actor_loss,
        b,
        ref=b["ref"],
        adv=adv,
        clip_low=0.2,
        clip_high=0.28,
        agg=agg,
        kl_coef=0.01,
        rollout=b["rollout"],
        tis_cap=1.5,
    )
    assert_parity(mine, reference)


def test_dr_grpo_relates_to_verl_seq_mean_token_sum_norm() -> None:
    # verl's "seq-mean-token-sum-norm" divides the token sum by T only; Dr. GRPO (and TRL's
    # "dr_grpo", which we follow) divides by B * max_len: the two differ by a factor B.
    b = random_batch(seed=7)
    x = torch.randn(6, 7)
    verl = (x * b["mask"]).sum() / b["mask"].shape[-1]
    assert close(aggregate(x, b["mask"], "dr-grpo"), verl / 6)
