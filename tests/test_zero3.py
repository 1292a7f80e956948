"""DeepSpeed ZeRO-3 on CPU (gloo): 2 learner workers equal 1, and the GPU recipes' ZeRO-3 settings
make a DeepSpeed config that DeepSpeed itself accepts (built without a GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from awares_rl.checkpoint import TrainerState
from awares_rl.config import load_recipe
from awares_rl.learner.backends import deepspeed_config
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.worker import LearnerWorker
from awares_rl.models import load_processor
from tests.test_learner import (  # noqa: F401
    OPTIM,
    assert_same_training,
    max_diff,
    ray_cluster,
    sequences,
    weights_of,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GPU_RECIPES = ["qwen25vl_7b_gpu.yaml", "qwen3vl_8b_gpu.yaml"]


def test_two_zero3_workers_equal_one_worker_and_resume(ray_cluster, tiny_dir, tmp_path):  # noqa: F811
    """As the ZeRO-2 test in test_learner.py, under ZeRO-3: parameters partitioned across the two
    ranks, gathered for the forward pass and for ``named_weights``; 5 sequences split 3 + 2 in
    micro-batches of 2. Same parameters as 1 torch worker after 2 steps (``assert_same_training``); then resume from
    the step-1 ZeRO-3 checkpoint and retake step 2: the same parameters again."""
    from cluster.actor_group import ActorGroup

    seqs = sequences(load_processor(tiny_dir), 5)
    group = ActorGroup(LearnerWorker, 2, str(tiny_dir), LearnerConfig(zero_stage=3, micro_batch_size=2), OPTIM)
    single = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=5), OPTIM)
    initial = weights_of(single)
    for step in range(2):
        m2 = group.call_split("sft_step", seqs)
        m1 = single.sft_step(seqs)
        assert m2[0]["loss"] == m2[1]["loss"] and math.isfinite(m1["loss"])
        assert m2[0]["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        assert m2[0]["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
        if step == 0:
            group.call("save", str(tmp_path / "step1"), TrainerState(step=1, policy_version=1))
    after, dp_after = weights_of(single), weights_of(group)
    assert_same_training(dp_after, after, initial)
    assert group.call("load_state", str(tmp_path / "step1"))[0].step == 1
    group.call_split("sft_step", seqs)
    assert max_diff(weights_of(group), dp_after) == 0.0
    group.shutdown()


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_zero3_config_is_valid(recipe):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = load_recipe(RECIPES / recipe)
    lc = cfg.learner
    assert (lc.backend, lc.zero_stage, cfg.model.dtype) == ("deepspeed", 3, "bfloat16")
    assert (cfg.rollout.device, cfg.rollout.gpu_memory_utilization) == ("cuda", 0.85)
    ds = DeepSpeedConfig(deepspeed_config(lc.zero_stage, lc.micro_batch_size, cfg.sft.grad_clip,
                                          bf16=cfg.model.dtype == "bfloat16"))
    assert ds.zero_optimization_stage == 3 and ds.zero_enabled and ds.bfloat16_config.enabled
    assert ds.train_micro_batch_size_per_gpu == lc.micro_batch_size and ds.gradient_clipping == cfg.sft.grad_clip


def test_deepspeed_config_check_is_not_vacuous():
    """DeepSpeedConfig rejects a ZeRO key it does not know (so the recipe test above can fail)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    bad = deepspeed_config(3, 2, 1.0, bf16=True)
    bad["zero_optimization"] = {"stage": 3, "not_a_zero_key": 1}
    with pytest.raises(Exception, match="not_a_zero_key"):
        DeepSpeedConfig(bad)
