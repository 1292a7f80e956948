"""GRPO with several optimizer steps per rollout batch: PPO clipping acting once ``old_logprobs``
differ from the learner's, dr-grpo's fixed ``max_len`` making the loss split-independent, the
deterministic mini-batch split, the pooled metrics, the config keys, and a real LearnerWorker whose
clip fraction leaves 0 after its first step on a batch."""

from __future__ import annotations

import math

import pytest
import torch

from awares_rl.algo import policy_loss
from awares_rl.core.config_io import ConfigError, apply_overrides, build
from awares_rl.grpo import GRPOConfig, attach_logprobs, minibatch_indices, needs_old_logprobs
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.ppo import PPOClip, finish_stats, pool_steps
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from cluster.actor_group import ActorGroup
from tests.test_learner import sequences


def ppo_batch(logp_rows: list[list[float]], old_rows: list[list[float]], adv: list[float]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(learner logprobs (B, W-1) with grad, a collated-like batch of width W = longest row + 1).

    Row b trains its first len(logp_rows[b]) targets (input positions 1..n: position 0 is the
    prompt, never a target); padding is 0 in every tensor."""
    width = max(len(r) for r in logp_rows) + 1
    logp = torch.zeros(len(logp_rows), width - 1)
    old, weights = torch.zeros(len(logp_rows), width), torch.zeros(len(logp_rows), width)
    for b, (row, old_row) in enumerate(zip(logp_rows, old_rows, strict=True)):
        logp[b, : len(row)] = torch.tensor(row)
        old[b, 1 : len(row) + 1] = torch.tensor(old_row)
        weights[b, 1 : len(row) + 1] = 1.0
    batch = {"input_ids": torch.zeros(len(logp_rows), width, dtype=torch.long), "loss_weights": weights,
             "old_logprobs": old, "advantages": torch.tensor(adv)}
    return logp.requires_grad_(), batch


# ---------------------------------------------------------------------------- (a) clipping acts

# old_logp = 0, so r = exp(logp). Defaults clip_low 0.2, clip_high 0.28 -> clip(r) in [0.8, 1.28].
#   row 0 (A = +1): -min(r, clip r):  1.5 -> -1.28 (clipped high), 0.9 -> -0.9, 1.0 -> -1.0,
#                                      0.7 -> -0.7 (below 0.8, but A > 0: min keeps r, not clipped)
#   row 1 (A = -1): max(r, clip r):   0.5 -> 0.8 (clipped low), 1.1 -> 1.1,
#                                      1.5 -> 1.5 (above 1.28, but A < 0: max keeps r), padding
# loss sum = -3.88 + 3.4 = -0.48 over 7 action tokens: token-mean -0.0685714;
# clipped 2 of 7 -> clip_fraction 0.285714 (low 1/7, high 1/7).
# d(loss sum)/d logp = -A r on unclipped tokens, 0 on clipped ones:
#   row 0: [0, -0.9, -1.0, -0.7]; row 1: [0, +1.1, +1.5, 0 (padding)]
CLIP_RATIOS = [[1.5, 0.9, 1.0, 0.7], [0.5, 1.1, 1.5]]


def test_ppo_clip_acts_on_old_logprobs_hand_values() -> None:
    logp, batch = ppo_batch([[math.log(r) for r in row] for row in CLIP_RATIOS], [[0.0] * 4, [0.0] * 3],
                            [1.0, -1.0])
    objective = PPOClip()
    loss_sum, stats = objective(logp, batch)
    assert objective.denominator(batch) == 7.0
    assert loss_sum.item() == pytest.approx(-0.48, abs=1e-6)
    assert loss_sum.item() / 7 == pytest.approx(-0.0685714, abs=1e-6)
    means = finish_stats(stats)
    assert means["clip_fraction"] == pytest.approx(2 / 7, abs=1e-6)
    assert means["clip_fraction_low"] == pytest.approx(1 / 7) and means["clip_fraction_high"] == pytest.approx(1 / 7)
    loss_sum.backward()
    want = torch.tensor([[0.0, -0.9, -1.0, -0.7], [0.0, 1.1, 1.5, 0.0]])
    assert torch.allclose(logp.grad, want, atol=1e-6)  # zero on the clipped (and padding) tokens


def test_without_old_logprobs_the_ratio_is_one_and_nothing_clips() -> None:
    logp, batch = ppo_batch([[math.log(r) for r in row] for row in CLIP_RATIOS], [[0.0] * 4, [0.0] * 3],
                            [1.0, -1.0])
    del batch["old_logprobs"]  # one optimizer step per batch: pi_old = the learner itself
    loss_sum, stats = PPOClip()(logp, batch)
    means = finish_stats(stats)
    assert means["clip_fraction"] == 0.0 and means["ratio_mean"] == pytest.approx(1.0)
    assert loss_sum.item() == pytest.approx(-(4 - 3), abs=1e-6)  # -sum(A) over tokens: -4 + 3


# ---------------------------------------------------------------------------- (b) dr-grpo split

# three sequences of 4, 2 and 3 action tokens; micro-batch 2 holds only the last (width 3 + 1)
DR_LOGP = [[-0.1, -0.5, -0.2, -0.9], [-1.0, -0.3], [-0.4, -0.6, -0.05]]
DR_OLD = [[-0.3, -0.5, -0.1, -0.6], [-0.7, -0.35], [-0.4, -0.2, -0.3]]
DR_ADV = [1.0, -0.5, 2.0]


def split_total(objective: PPOClip, parts: list[slice]) -> float:
    """The learner's step loss: micro-batch loss sums over the summed denominators."""
    sums, denom = 0.0, 0.0
    for part in parts:
        logp, batch = ppo_batch(DR_LOGP[part], DR_OLD[part], DR_ADV[part])
        loss_sum, _ = objective(logp, batch)
        sums, denom = sums + loss_sum.item(), denom + objective.denominator(batch)
    return sums / denom


def test_dr_grpo_fixed_max_len_does_not_depend_on_the_split() -> None:
    fixed = PPOClip(agg="dr-grpo", max_len=8)
    one, two = split_total(fixed, [slice(0, 3)]), split_total(fixed, [slice(0, 2), slice(2, 3)])
    assert one == pytest.approx(two, rel=1e-6)
    logp, batch = ppo_batch(DR_LOGP, DR_OLD, DR_ADV)  # == policy_loss over the whole batch
    mask = batch["loss_weights"][:, 1:] != 0
    whole, _ = policy_loss(logp, batch["old_logprobs"][:, 1:], batch["advantages"], mask, 0.2, 0.28,
                           "dr-grpo", max_len=8)
    assert one == pytest.approx(whole.item(), rel=1e-6)
    # the default max_len (each micro-batch's width: 4, then 3) makes the loss follow the split
    free = PPOClip(agg="dr-grpo")
    assert split_total(free, [slice(0, 3)]) != pytest.approx(split_total(free, [slice(0, 2), slice(2, 3)]))


# ---------------------------------------------------------------------------- the mini-batch split


def test_minibatch_indices_keep_groups_whole() -> None:
    groups = [k for k in "abcdef" for _ in range(4)]  # 6 groups of G=4, in rollout order
    parts = minibatch_indices(24, 3, 2, seed=7, groups=groups)
    assert len(parts) == 6 and [len(p) for p in parts] == [8] * 6
    for e in range(2):
        assert sorted(i for p in parts[3 * e:3 * e + 3] for i in p) == list(range(24))
    for p in parts:  # each part is two whole groups, each in rollout order
        keys = [groups[i] for i in p]
        assert len(set(keys)) == 2 and all(keys.count(k) == 4 for k in set(keys))
        assert p == sorted(p[:4]) + sorted(p[4:])
    assert minibatch_indices(24, 3, 2, seed=7, groups=groups) == parts
    assert parts[:3] != parts[3:]  # another permutation of the groups each epoch
    odd = minibatch_indices(10, 2, 1, seed=1, groups=list("aaabbbbccc"))  # sizes 5 / 5: one group is cut
    assert sorted(odd[0] + odd[1]) == list(range(10)) and [len(p) for p in odd] == [5, 5]
    with pytest.raises(ValueError, match="3 group keys for 4 sequences"):
        minibatch_indices(4, 2, 1, seed=0, groups=["a", "a", "b"])


def test_minibatch_indices_partition_each_epoch_deterministically() -> None:
    parts = minibatch_indices(10, 3, 2, seed=7)
    assert [len(p) for p in parts] == [4, 3, 3, 4, 3, 3]
    for epoch in (parts[:3], parts[3:]):
        assert sorted(i for p in epoch for i in p) == list(range(10))
    assert parts[:3] != parts[3:]  # each pass reshuffles
    assert minibatch_indices(10, 3, 2, seed=7) == parts  # a resumed run takes the same steps
    assert minibatch_indices(10, 3, 2, seed=8) != parts
    assert minibatch_indices(5, 1, 2, seed=7) == [[0, 1, 2, 3, 4]] * 2  # one mini-batch: rollout order
    with pytest.raises(ValueError, match="cannot split 2 items"):
        minibatch_indices(2, 3, 1, seed=0)


def test_pool_steps_hand_values() -> None:
    # 2 epochs x 1 mini-batch of 5 action tokens: clipped 0 then 2 tokens -> 2 / 10 = 0.2;
    # loss, grad_norm, lr averaged; counts per pass (10 / 2 = 5); step the last, step_s the total
    first = {"clip_fraction_sum": 0.0, "ratio_max_sum": 1.0, "action_tokens": 5.0, "sequences": 2.0,
             "loss": -0.2, "grad_norm": 1.0, "lr": 1e-3, "step": 3.0, "step_s": 0.5}
    second = {**first, "clip_fraction_sum": 2.0, "loss": -0.4, "grad_norm": 3.0, "step": 4.0}
    pooled = pool_steps([first, second], epochs=2)
    assert pooled == pytest.approx({"clip_fraction": 0.2, "action_tokens": 5.0, "sequences": 2.0, "loss": -0.3,
                                    "grad_norm": 2.0, "lr": 1e-3, "step": 4.0, "step_s": 1.0})
    assert pool_steps([second]) == finish_stats(second)
    with pytest.raises(ValueError, match="at least one"):
        pool_steps([])


# ---------------------------------------------------------------------------- (c) config keys


def grpo_config(*overrides: str) -> GRPOConfig:
    """The grpo section as a recipe's ``grpo.key=value`` overrides build it."""
    return build(GRPOConfig, apply_overrides({}, list(overrides))["grpo"], prefix="grpo.")


def test_grpo_config_new_keys() -> None:
    assert (GRPOConfig().mini_batches, GRPOConfig().ppo_epochs, GRPOConfig().max_len) == (1, 1, None)
    cfg = grpo_config("grpo.mini_batches=4", "grpo.ppo_epochs=2", "grpo.max_len=48")
    assert (cfg.mini_batches, cfg.ppo_epochs, cfg.max_len) == (4, 2, 48)
    assert grpo_config("grpo.max_len=null").max_len is None


@pytest.mark.parametrize("override,message", [
    ("grpo.mini_batches=0", "grpo.mini_batches and grpo.ppo_epochs must be >= 1"),
    ("grpo.ppo_epochs=0", "grpo.mini_batches and grpo.ppo_epochs must be >= 1"),
    ("grpo.max_len=0", "grpo.max_len must be a positive token count, or null"),
    ("grpo.ppo_epochs=two", "grpo.ppo_epochs: expected an integer"),
])
def test_grpo_config_rejects_bad_new_keys(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        grpo_config(override)


# ---------------------------------------------------------------------------- a real learner


def test_learner_old_logprobs_make_clipping_act(tiny_dir) -> None:
    """old_logprobs = the worker's own eval_logprobs: its first step is on-policy (ratio 1, nothing
    clipped); a large lr moves it, so the next steps on the same batch clip."""
    seqs = sequences(load_processor(tiny_dir), 4)
    for seq, adv in zip(seqs, [1.0, -1.0, -1.0, 1.0]):
        seq.advantage = adv
    learner = ActorGroup(LearnerWorker, 1, str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=2),
                         OptimSettings(lr=0.05, total_steps=3, min_lr_ratio=1.0), in_process=True)
    attach_logprobs(seqs, "old_logprobs", learner)
    steps = [finish_stats(learner.call_split("train_step", seqs, PPOClip())[0]) for _ in range(3)]
    assert steps[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and steps[0]["clip_fraction"] == 0.0
    assert steps[2]["clip_fraction"] > 0.0 and steps[2]["approx_kl"] > 0.0


def test_only_the_steps_after_the_first_need_old_logprobs_scored() -> None:
    parts = minibatch_indices(6, 2, 1, seed=3)
    assert needs_old_logprobs(parts, epochs=1) == sorted(parts[1])  # the first step runs on pi_old itself
    assert needs_old_logprobs(minibatch_indices(6, 2, 2, seed=3), epochs=2) == list(range(6))  # all come back
    assert needs_old_logprobs(minibatch_indices(6, 1, 2, seed=3), epochs=2) == list(range(6))
    assert needs_old_logprobs(minibatch_indices(6, 1, 1, seed=3), epochs=1) == []  # one step: none


def test_the_first_step_is_the_same_with_or_without_scored_old_logprobs(tiny_dir) -> None:
    """Skipping the first optimizer step's old_logprobs changes nothing: its detached logprobs are
    pi_old (same loss, same updated weights to 1e-6)."""
    results = []
    for scored in (True, False):
        seqs = sequences(load_processor(tiny_dir), 4)
        for seq, adv in zip(seqs, [1.0, -1.0, -1.0, 1.0]):
            seq.advantage = adv
        learner = ActorGroup(LearnerWorker, 1, str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=2),
                             OptimSettings(lr=0.05, total_steps=1, min_lr_ratio=1.0), in_process=True)
        if scored:
            attach_logprobs(seqs, "old_logprobs", learner)
        stats = finish_stats(learner.call_split("train_step", seqs, PPOClip())[0])
        results.append((stats["loss"], {n: p.detach().clone() for n, p in learner.local.model.named_parameters()}))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert max((w_a[n] - w_b[n]).abs().max().item() for n in w_a) < 1e-6


def test_eval_logprobs_match_the_stock_forward_at_any_thread_count(tiny_dir) -> None:
    """The learner scores on CPU with fast_vision (batched window attention, linear patch embed):
    the same logprobs as the stock transformers forward; ``threads`` holds for that call only."""
    from awares_rl.learner.batch import collate_sequences
    from awares_rl.learner.forward import sequence_logprobs

    seqs = sequences(load_processor(tiny_dir), 4)
    worker = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=4, threads=2),
                           OptimSettings(lr=1e-3, total_steps=1))
    fast, one_thread = worker.eval_logprobs(seqs), worker.eval_logprobs(seqs, threads=1)
    assert torch.get_num_threads() == 2  # restored after the 1-thread call
    worker.model.eval()
    with torch.no_grad():
        batch = collate_sequences(seqs, worker.processor)  # input order, images processed per use
        stock = sequence_logprobs(worker.model, batch, batch["loss_weights"][:, 1:] != 0)
    for i, seq in enumerate(seqs):
        n = len(seq.token_ids)
        want = [0.0] + stock[i, : n - 1].tolist()
        assert fast[i] == pytest.approx(want, abs=1e-5) and one_thread[i] == pytest.approx(want, abs=1e-5)
