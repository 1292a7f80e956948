"""The formulas of TRL, OpenRLHF and verl, restated in a few lines each from the public code named
above each function, for the parity checks of tests/test_algo.py and tests/test_algo_parity.py."""

from __future__ import annotations

from collections import defaultdict

import torch


def trl_advantages(rewards: torch.Tensor, g: int, scale: bool) -> torch.Tensor:
    # trl/trainer/grpo_trainer.py: GRPOTrainer._generate_and_score_completions
    mean = rewards.view(-1, g).mean(dim=1).repeat_interleave(g)
    std = rewards.view(-1, g).std(dim=1).repeat_interleave(g)
    advantages = rewards - mean
    return advantages / (std + 1e-4) if scale else advantages


def openrlhf_group_norm(rewards: torch.Tensor, g: int) -> torch.Tensor:
    # openrlhf/trainer/ppo_utils/experience_maker.py: advantage_estimator == "group_norm"
    r = rewards.reshape(-1, g)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-9)).reshape(-1)


def openrlhf_dr_grpo(rewards: torch.Tensor, g: int) -> torch.Tensor:
    # openrlhf/trainer/ppo_utils/experience_maker.py: advantage_estimator == "dr_grpo"
    r = rewards.reshape(-1, g)
    return (r - r.mean(-1, keepdim=True)).reshape(-1)


def verl_grpo_advantages(scores: torch.Tensor, index: list, norm_by_std: bool) -> torch.Tensor:
    # verl/trainer/ppo/core_algos.py: compute_grpo_outcome_advantage (epsilon = 1e-6)
    id2score = defaultdict(list)
    for i, idx in enumerate(index):
        id2score[idx].append(scores[i])
    mean = {k: torch.stack(v).mean() for k, v in id2score.items()}
    std = {k: torch.stack(v).std() for k, v in id2score.items()}
    out = scores.clone()
    for i, idx in enumerate(index):
        out[i] = scores[i] - mean[idx]
        if norm_by_std:
            out[i] = out[i] / (std[idx] + 1e-6)
    return out


def openrlhf_approx_kl(logp: torch.Tensor, base: torch.Tensor, kind: str) -> torch.Tensor:
    # openrlhf/models/utils.py: compute_approx_kl
    log_ratio = logp.float() - base.float()
    if kind == "k2":
        log_ratio = log_ratio**2 / 2.0
    elif kind == "k3":
        log_ratio = -log_ratio
        log_ratio = log_ratio.exp() - 1 - log_ratio
    return log_ratio.clamp(min=-10, max=10)


def verl_kl_penalty(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    # verl/trainer/ppo/core_algos.py: kl_penalty ("k1", "k2"/"mse", "k3"/"low_var_kl")
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref).square()
    kl = torch.clamp(ref - logp, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def trl_grpo_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, max_len, is_ratio):
    # trl/trainer/grpo_trainer.py: GRPOTrainer._compute_loss (importance_sampling_ratio is
    # min(exp(old - vllm_logps), vllm_importance_sampling_cap) from _generate_and_score_completions)
    per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    per_token_loss = per_token_loss * is_ratio + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    else:  # dr_grpo
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    low = (coef_1 < 1 - eps_low) & (adv.unsqueeze(1) < 0)
    high = (coef_1 > 1 + eps_high) & (adv.unsqueeze(1) > 0)
    return loss, ((low | high).float() * mask).sum() / mask.sum()


def openrlhf_policy_loss(logp, old, adv, mask, eps_low, eps_high, token_level):
    # openrlhf/models/loss.py: PolicyLoss.forward (masked_mean from openrlhf/models/utils.py)
    def mm(x, dim=None):
        return (x * mask).sum() / mask.sum() if dim is None else (x * mask).sum(dim) / mask.sum(dim)

    ratio = (logp - old).exp()
    surr1 = ratio * adv
    surr2 = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(surr1, surr2)
    loss = mm(loss) if token_level else mm(loss, -1).mean()
    return loss, mm(torch.lt(surr2, surr1).float())


def verl_actor_loss(logp, old, ref, adv, mask, clip_low, clip_high, agg, kl_coef, rollout, tis_cap):
    # verl/trainer/ppo/core_algos.py: compute_policy_loss_vanilla (clip_ratio_c = 3, TIS) and
    # agg_loss; the actor adds kl_coef * agg_loss(kl_penalty(..., "low_var_kl")).
    def masked_mean(x):  # verl/utils/torch_functional.py
        return (x * mask).sum() / (mask.sum() + 1e-8)

    def agg_loss(x):
        if agg == "token-mean":
            return masked_mean(x)
        return ((x * mask).sum(-1) / mask.sum(-1)).mean()  # seq-mean-token-mean

    ratio = torch.exp(torch.clamp(logp - old, min=-20.0, max=20.0))
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float())
    clip_pg_losses2 = torch.min(-adv * 3.0, clip_pg_losses1)
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    pg_losses = pg_losses * torch.clamp(torch.exp(old - rollout), max=tis_cap)
    kl = verl_kl_penalty(logp, ref, "k3")
    return agg_loss(pg_losses) + kl_coef * agg_loss(kl), clipfrac
