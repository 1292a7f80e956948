"""GRPO: the driver's pure pieces, and a 2-step run with real Ray actors (vLLM rollout worker,
reward pool, DeepSpeed learner) that checks the loss, the weights and the policy version."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from awares_rl.config import load_recipe
from awares_rl.episode import Episode, RewardParts
from awares_rl.grpo import GRPOTrainer, episode_advantages
from awares_rl.sampling import PromptSampler, sampling_seed


def test_prompt_sampler_is_resumable():
    a = PromptSampler(5, seed=3)
    first = a.next(4) + a.next(4)  # crosses an epoch boundary
    b = PromptSampler(5, seed=3)
    b.next(4)
    c = PromptSampler(5, seed=3, **b.state())
    assert first[4:] == c.next(4)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]  # each epoch is a permutation


def test_sampling_seed_depends_on_step_and_offset_only():
    assert sampling_seed(0, 3, 16) == sampling_seed(0, 3, 16)
    assert len({sampling_seed(0, s, o) for s in range(5) for o in range(0, 64, 8)}) == 40


def test_episode_advantages_group_relative():
    eps = [Episode("s", "q", ["a"], "exact", (10, 10)) for _ in range(4)]
    for ep, r in zip(eps, [1.0, 0.0, 0.5, 0.5]):
        ep.reward = RewardParts(r, 0.0, 0.0, r, "exact")
    adv = episode_advantages(eps, 2, "group")
    # group (1, 0): mean .5, unbiased std .7071 -> +-0.7071; group (.5, .5): std 0 -> 0
    assert torch.allclose(adv, torch.tensor([0.7071, -0.7071, 0.0, 0.0]), atol=1e-3)


@pytest.mark.slow
def test_two_grpo_steps_with_real_actors(tmp_path, tool_model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_recipe("recipes/tiny_cpu.yaml", [
        f"run.out_dir={tmp_path}", "run.name=g", "data.n_train=8", "rollout.group_size=4",
        "rollout.max_new_tokens=16", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.lr=1e-3",
        "grpo.save_every=1", "grpo.kl_coef=0.01", "learner.backend=deepspeed", "learner.zero_stage=1", "logging.wandb=false",
    ])
    trainer = GRPOTrainer(cfg, start_model=tool_model_dir)
    out = trainer.fit()
    rows = [json.loads(line) for line in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["learner/loss"])) for r in rows)
    assert rows[0]["rollout/policy_version"] == 0 and rows[1]["rollout/policy_version"] == 1
    assert rows[0]["rollout/episodes"] == 8 and rows[0]["learner/action_tokens"] > 0
    assert rows[0]["learner/kl_ref"] == pytest.approx(0.0, abs=1e-5)  # step 1: policy == reference
    assert rows[1]["learner/kl_ref"] > 0  # after one update the policy moved away from it
    before, after = load_file(str(tool_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (cfg.run.dir / "checkpoints" / "grpo").is_dir()
    import ray

    ray.shutdown()
