"""awares_rl.algo: hand-computed values, masking invariance, and parity with TRL / OpenRLHF / verl
for advantages and KL (the policy loss's parity: tests/test_algo_parity.py).

The reference functions (tests/algo_references.py) restate, in a few lines each, the published
formulas of those libraries (the source file is named above each); they run on the same seeded inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from awares_rl.algo import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    entropy_from_logits,
    group_advantages,
    kl_in_reward,
    kl_penalty,
    masked_mean,
    policy_loss,
    token_logprobs,
    weighted_token_nll,
)
from tests.algo_references import (
    openrlhf_approx_kl,
    openrlhf_dr_grpo,
    openrlhf_group_norm,
    trl_advantages,
    verl_grpo_advantages,
    verl_kl_penalty,
)

LN2 = math.log(2.0)


def close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-5) -> bool:
    return torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=tol)


def random_batch(seed: int = 0, b: int = 6, t: int = 7) -> dict[str, torch.Tensor]:
    """Seeded (B, T) inputs with ragged action masks (every row keeps >= 1 token)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    return {
        "old": old,
        "logp": old + 0.25 * torch.randn(b, t, generator=g),
        "ref": old + 0.25 * torch.randn(b, t, generator=g),
        "rollout": old + 0.4 * torch.randn(b, t, generator=g),
        "adv": torch.randn(b, generator=g),
        "mask": (torch.arange(t)[None] < lengths[:, None]).float(),
    }


# ---------------------------------------------------------------------------- advantages


def test_group_advantages_hand_values() -> None:
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    # Group 1 [1,0,0,1]: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.5773503,
    #   A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239.
    # Group 2 [1,1,1,1]: every reward equals the mean -> A = 0 (0 / eps, no blow-up).
    expected = torch.tensor([0.8660239, -0.8660239, -0.8660239, 0.8660239, 0, 0, 0, 0])
    assert close(group_advantages(rewards, 4), expected)
    # Dr. GRPO ("none"): only centred -> [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0].
    assert close(group_advantages(rewards, 4, "none"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale", "message"),
    [
        (torch.zeros(2, 4), 4, "group", "1-D"),
        (torch.zeros(6), 4, "group", "groups of 4"),
        (torch.zeros(4), 1, "group", "group_size must be >= 2"),
        (torch.zeros(4), 2, "batch", "unknown advantage scale"),
    ],
)
def test_group_advantages_validation(rewards, group_size, scale, message) -> None:
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size, scale)


def test_group_advantages_constant_group_is_exactly_zero() -> None:
    # In float32, 8 x 0.7 has a mean off by 6e-8 and a std of 6e-8: TRL/verl-style code returns
    # A ~ 0.056 of pure rounding noise. Statistics in float64 make it exactly 0.
    assert torch.equal(group_advantages(torch.full((16,), 0.7), 8), torch.zeros(16))
    assert group_advantages(torch.rand(8), 4).dtype == torch.float32


def test_group_advantages_match_trl_openrlhf_verl() -> None:
    torch.manual_seed(0)
    # float64 inputs keep the references free of the float32 noise shown above
    rewards = torch.rand(5 * 8, dtype=torch.float64)
    rewards[8:16] = 0.7  # a degenerate group
    assert close(group_advantages(rewards, 8, eps=1e-4), trl_advantages(rewards, 8, True))
    assert close(group_advantages(rewards, 8, "none"), trl_advantages(rewards, 8, False))
    assert close(group_advantages(rewards, 8, eps=1e-9), openrlhf_group_norm(rewards, 8))
    assert close(group_advantages(rewards, 8, "none"), openrlhf_dr_grpo(rewards, 8))
    index = torch.arange(5).repeat_interleave(8).tolist()
    assert close(group_advantages(rewards, 8), verl_grpo_advantages(rewards, index, True))
    assert close(group_advantages(rewards, 8, "none"), verl_grpo_advantages(rewards, index, False))


# ---------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values() -> None:
    logp = torch.tensor([[LN2, -LN2]])
    ref = torch.zeros(1, 2)
    # d = logp - ref = [ln 2, -ln 2]
    # k1 = d                   = [0.693147, -0.693147]
    # k2 = d^2 / 2             = [0.240227, 0.240227]
    # k3 = exp(-d) + d - 1     = [0.5 + 0.693147 - 1, 2 - 0.693147 - 1] = [0.193147, 0.306853]
    assert close(kl_penalty(logp, ref, "k1"), [[0.693147, -0.693147]])
    assert close(kl_penalty(logp, ref, "k2"), [[0.240227, 0.240227]])
    assert close(kl_penalty(logp, ref, "k3"), [[0.193147, 0.306853]])
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, "k4")
    with pytest.raises(ValueError, match="shape mismatch"):
        kl_penalty(logp, ref[:, :1], "k1")


def test_kl_estimators_exact_expectation_under_policy() -> None:
    # Weighting each vocabulary entry by pi(x) gives E_{x~pi}[k(x)] exactly (no sampling noise).
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(1, 50), -1)
    ref = torch.log_softmax(torch.randn(1, 50), -1)
    true_kl = (logp.exp() * (logp - ref)).sum()
    expectation = {k: (logp.exp() * kl_penalty(logp, ref, k)).sum() for k in KL_ESTIMATORS}
    assert close(expectation["k1"], true_kl) and close(expectation["k3"], true_kl)  # unbiased
    assert not close(expectation["k2"], true_kl, tol=1e-3)  # k2 is biased
    k1 = kl_penalty(logp, ref, "k1")
    assert (k1 < 0).any() and true_kl > 0  # k1 per token has either sign, its mean is >= 0
    assert (kl_penalty(logp, ref, "k3") >= 0).all() and (kl_penalty(logp, ref, "k2") >= 0).all()


def test_kl_matches_openrlhf_and_verl() -> None:
    torch.manual_seed(2)
    logp, ref = 2 * torch.randn(4, 9) - 2, 2 * torch.randn(4, 9) - 2
    assert (kl_penalty(logp, ref, "k3") == 10).any()  # the cap at 10 is exercised
    for kind in KL_ESTIMATORS:
        ours_kl = kl_penalty(logp, ref, kind)
        assert close(ours_kl, verl_kl_penalty(logp, ref, kind))
        # OpenRLHF also caps k1/k2 at +-10 (verl does not, nor do we): compare below the cap
        below = ours_kl.abs() < 10
        assert close(ours_kl[below], openrlhf_approx_kl(logp, ref, kind)[below])


def test_kl_in_reward_hand_value() -> None:
    rewards = torch.tensor([1.0, 0.0])
    ref = torch.zeros(2, 3)
    logp = torch.tensor([[LN2, -LN2, 5.0], [LN2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # k1 summed over action tokens: row 0 ln2 - ln2 = 0 (the 5.0 is padding); row 1 ln 2.
    # r' = r - 0.1 * sum = [1.0, -0.0693147]
    assert close(kl_in_reward(rewards, logp, ref, mask, beta=0.1), [1.0, -0.0693147])


# ---------------------------------------------------------------------------- policy loss

# The 2 x 3 example: old_logp = 0, so ratio r = exp(logp); advantages A = [+1, -1];
# the last token of row 1 is padding. clip 0.2 / 0.2 -> clip(r) in [0.8, 1.2].
#   row 0 (A=+1): -min(r, clip r):  r=1.5 -> -1.2 (high-clipped), r=0.9 -> -0.9, r=1.0 -> -1.0
#   row 1 (A=-1): max(r, clip r):   r=0.5 -> 0.8 (low-clipped),   r=1.1 -> 1.1,  (r=2.0 masked)
# sum over the 5 action tokens = -3.1 + 1.9 = -1.2
HAND_RATIO = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 2.0]])
HAND_ADV = torch.tensor([1.0, -1.0])
HAND_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
HAND_LOSS = {
    "token-mean": -1.2 / 5,  # -0.24
    "seq-mean-token-mean": (-3.1 / 3 + 1.9 / 2) / 2,  # (-1.033333 + 0.95) / 2 = -0.0416667
    "dr-grpo": -1.2 / (2 * 3),  # max_len defaults to T = 3 -> -0.2
}


def hand_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return HAND_RATIO.log().requires_grad_(), torch.zeros(2, 3)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_policy_loss_hand_values_every_aggregation(agg: str) -> None:
    logp, old = hand_inputs()
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, agg=agg)
    assert close(loss, HAND_LOSS[agg]) and close(stats["pg_loss"], HAND_LOSS[agg])
    # clipped tokens: (0,0) high and (1,0) low, of 5 -> 0.2 each, 0.4 in all
    assert close(stats["clip_fraction"], 0.4)
    assert close(stats["clip_fraction_high"], 0.2) and close(stats["clip_fraction_low"], 0.2)
    # ratio over action tokens: mean (1.5 + 0.9 + 1 + 0.5 + 1.1) / 5 = 1.0, max 1.5
    assert close(stats["ratio_mean"], 1.0) and close(stats["ratio_max"], 1.5)
    # approx_kl = mean of r - ln r - 1 (k3 of KL(old || new)):
    #   (0.094535 + 0.005361 + 0 + 0.193147 + 0.004690) / 5 = 0.0595466
    assert close(stats["approx_kl"], 0.0595466)
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_dr_grpo_constant_max_len() -> None:
    logp, old = hand_inputs()
    loss, _ = policy_loss(logp, old, HAND_ADV, HAND_MASK, agg="dr-grpo", max_len=4)
    assert close(loss, -1.2 / (2 * 4))  # -0.15
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(logp, old, HAND_ADV, HAND_MASK, agg="dr-grpo", max_len=0)


def test_policy_loss_separate_low_and_high_clip() -> None:
    logp, old = hand_inputs()
    # clip_high 0.6: r = 1.5 < 1.6 is no longer clipped -> -1.5; (-3.4 + 1.9) / 5 = -0.3
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, clip_low=0.2, clip_high=0.6)
    assert close(loss, -0.3)
    assert close(stats["clip_fraction_high"], 0.0) and close(stats["clip_fraction_low"], 0.2)
    # clip_low 0.6: r = 0.5 >= 0.4 is no longer clipped -> 0.5; (-3.1 + 1.6) / 5 = -0.3
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, clip_low=0.6, clip_high=0.2)
    assert close(loss, -0.3)
    assert close(stats["clip_fraction_high"], 0.2) and close(stats["clip_fraction_low"], 0.0)


def test_policy_loss_kl_to_reference() -> None:
    logp, old = hand_inputs()
    ref = logp.detach() - LN2  # d = ln 2 on every token -> k3 = 0.193147
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, ref_logp=ref, kl_coef=0.1)
    assert close(loss, -0.24 + 0.1 * 0.193147)  # -0.2206853
    assert close(stats["kl_ref"], 0.193147) and close(stats["pg_loss"], -0.24)
    # kl_coef = 0 with a reference: logged, not in the loss
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, ref_logp=ref)
    assert close(loss, -0.24) and close(stats["kl_ref"], 0.193147)


def test_policy_loss_truncated_importance_sampling() -> None:
    logp, old = hand_inputs()
    raw = torch.tensor([[2.0, 0.5, 1.0], [3.0, 1.0, 1.0]])  # exp(old - rollout)
    rollout = (old - raw.log()).requires_grad_()
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, rollout_logp=rollout, tis_cap=2.0)
    # w = min(raw, 2) = [[2, .5, 1], [2, 1, -]]; per-token pg * w:
    #   row 0: -1.2*2 = -2.4, -0.9*0.5 = -0.45, -1.0;   row 1: 0.8*2 = 1.6, 1.1
    #   (-3.85 + 2.7) / 5 = -0.23
    assert close(loss, -0.23)
    assert close(stats["tis_weight_mean"], 6.5 / 5)  # 1.3
    assert close(stats["tis_capped_fraction"], 0.2)  # only the 3.0 exceeds the cap
    # rollout_kl = mean of w - ln w - 1 over raw: (0.306853 + 0.193147 + 0 + 0.901388 + 0) / 5
    assert close(stats["rollout_kl"], 0.2802776)
    loss.backward()
    assert rollout.grad is None  # the weight is detached
    # without a cap: diagnostics only, the loss is the plain one
    loss, stats = policy_loss(logp, old, HAND_ADV, HAND_MASK, rollout_logp=rollout)
    assert close(loss, -0.24) and "rollout_kl" in stats and "tis_weight_mean" not in stats


@pytest.mark.parametrize(
    ("agg", "denominator"),
    [("token-mean", lambda m: m.sum()), ("seq-mean-token-mean", lambda m: 2 * m.sum(-1, True))],
)
def test_policy_loss_on_policy_gradient(agg, denominator) -> None:
    # At ratio 1 nothing is clipped and d loss / d logp_bt = -A_b / normaliser on action tokens.
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(2, 3), HAND_ADV, HAND_MASK, agg=agg)
    loss.backward()
    expected = -HAND_ADV[:, None] * HAND_MASK / denominator(HAND_MASK)
    assert close(logp.grad, expected)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
@pytest.mark.parametrize("garbage", [1e4, -1e4, float("inf"), float("nan")])
def test_policy_loss_ignores_masked_positions(agg: str, garbage: float) -> None:
    b = random_batch(seed=3)
    outside = ~b["mask"].bool()

    def run(perturb: bool) -> tuple[torch.Tensor, dict, torch.Tensor]:
        def f(x: torch.Tensor) -> torch.Tensor:
            return torch.where(outside, garbage, x) if perturb else x

        logp = f(b["logp"]).detach().requires_grad_()
        loss, stats = policy_loss(
            logp,
            f(b["old"]),
            b["adv"],
            b["mask"],
            agg=agg,
            max_len=12,
            ref_logp=f(b["ref"]),
            kl_coef=0.05,
            rollout_logp=f(b["rollout"]),
            tis_cap=2.0,
        )
        loss.backward()
        return loss, stats, logp.grad

    clean, perturbed = run(False), run(True)
    assert torch.isfinite(perturbed[0]) and torch.equal(clean[0], perturbed[0])
    assert clean[1].keys() == perturbed[1].keys()
    assert all(torch.equal(clean[1][k], perturbed[1][k]) for k in clean[1])
    assert torch.equal(clean[2], perturbed[2]) and not perturbed[2][outside].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"advantages": torch.zeros(2, 3)}, "advantages must be"),
        ({"mask": torch.ones(2, 4)}, "shape mismatch"),
        ({"ref_logp": torch.zeros(3, 3)}, "shape mismatch"),
        ({"kl_coef": 0.1}, "needs ref_logp"),
        ({"tis_cap": 2.0}, "needs rollout_logp"),
        ({"agg": "sum"}, "unknown loss aggregation"),
        ({"kl_kind": "k9"}, "unknown KL estimator"),
        ({"clip_low": 1.0}, "clip_low"),
    ],
)
def test_policy_loss_validation(kwargs: dict, message: str) -> None:
    args = {
        "logp": torch.zeros(2, 3),
        "old_logp": torch.zeros(2, 3),
        "advantages": HAND_ADV,
        "mask": HAND_MASK,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        policy_loss(**args)


# ---------------------------------------------------------------------------- utils


def test_masked_mean_hand_values() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert close(masked_mean(x, mask), 1.5)  # (1 + 2) / 2; the nan is outside the mask
    assert close(masked_mean(x, mask, dim=-1), [1.5, 0.0])  # an empty row gives 0, not nan
    weights = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    assert close(masked_mean(x, weights), 1.75)  # (1*1 + 3*2) / 4
    assert close(masked_mean(x, torch.zeros(2, 3)), 0.0)


def test_token_logprobs_and_entropy() -> None:
    torch.manual_seed(8)
    logits, ids = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    expected = logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert close(token_logprobs(logits, ids), expected)
    half = token_logprobs(logits.bfloat16(), ids)
    assert half.dtype == torch.float32 and close(half, expected, tol=5e-2)
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    assert close(entropy_from_logits(logits), entropy)
    with pytest.raises(ValueError, match="token_logprobs"):
        token_logprobs(logits, ids[:, :4])


# ---------------------------------------------------------------------------- SFT


def sft_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # V = 2. logits at t predict labels[t + 1]:
    #   t=0 [ln3, 0] -> label 0: p = 3/4, nll = ln(4/3) = 0.287682, w = 1
    #   t=1 [ln3, 0] -> label 1: p = 1/4, nll = ln 4   = 1.386294, w = 5 (the tool-call token)
    #   t=2 [0, 0]   -> label 0: p = 1/2, nll = ln 2   = 0.693147, w = 1
    #   t=3 predicts nothing; labels[0] = -100 is never a target anyway.
    logits = torch.zeros(1, 4, 2)
    logits[0, :2, 0] = math.log(3.0)
    return logits, torch.tensor([[-100, 0, 1, 0]]), torch.tensor([[1.0, 1.0, 5.0, 1.0]])


def test_weighted_nll_hand_values() -> None:
    logits, labels, weights = sft_example()
    loss, stats = weighted_token_nll(logits, labels, weights)
    # "weights": (0.287682 + 5 * 1.386294 + 0.693147) / (1 + 5 + 1) = 7.912301 / 7 = 1.1303287
    assert close(loss, 1.1303287)
    # "tokens":  7.912301 / 3 = 2.6374337
    assert close(weighted_token_nll(logits, labels, weights, "tokens")[0], 2.6374337)
    # unweighted nll (0.287682 + 1.386294 + 0.693147) / 3 = 0.789041
    assert close(stats["nll"], 0.789041) and stats["tokens"] == 3 and close(stats["weight_sum"], 7)


def test_weighted_nll_ignores_untargeted_positions() -> None:
    logits, labels, weights = sft_example()
    base = weighted_token_nll(logits, labels, weights)[0]
    logits2, labels2, weights2 = logits.clone(), labels.clone(), weights.clone()
    logits2[0, 3] = torch.tensor([50.0, -50.0])  # the last position predicts nothing
    weights2[0, 0] = 100.0  # the first token is never a target
    assert torch.equal(base, weighted_token_nll(logits2, labels2, weights2)[0])
    labels2[0, 2], weights2[0, 3] = -100, 0.0  # drop the w=5 token (ignored) and t=2 (weight 0)
    assert close(weighted_token_nll(logits2, labels2, weights2)[0], 0.287682)


def test_weighted_nll_matches_hf_cross_entropy_with_unit_weights() -> None:
    # transformers' ForCausalLMLoss and openrlhf/models/loss.py GPTLMLoss: shift, then
    # CrossEntropyLoss(ignore_index=-100), mean over labelled tokens.
    torch.manual_seed(9)
    logits, labels = torch.randn(3, 6, 13), torch.randint(0, 13, (3, 6))
    labels[0, :3] = -100
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1))
    for normalize in ("weights", "tokens"):
        loss, _ = weighted_token_nll(logits, labels, torch.ones(3, 6), normalize)
        assert close(loss, expected)


def test_weighted_nll_empty_targets_and_validation() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss, stats = weighted_token_nll(logits, torch.full((2, 3), -100), torch.ones(2, 3))
    loss.backward()
    assert loss == 0 and stats["tokens"] == 0 and not logits.grad.any()
    with pytest.raises(ValueError, match="normalize"):
        weighted_token_nll(logits, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), "sum")
    with pytest.raises(ValueError, match="logits must be"):
        weighted_token_nll(logits[:, :2], torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
