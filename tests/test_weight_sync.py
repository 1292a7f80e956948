"""Bucketed weight sync (awares_rl/learner/sync.py) on a real local Ray: a learner actor puts its
weights into the object store itself, a rollout worker fetches them bucket by bucket and ends up
with the learner's weights; ``learner.freeze_vision`` keeps the ViT unchanged through training
(torch and DeepSpeed: no gradient, no optimizer state) and out of the sync; a tiny GRPO run logs
the bytes it sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from awares_rl.checkpoint import checkpoint_names
from awares_rl.config import load_recipe
from awares_rl.grpo import GRPOTrainer
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.sync import WeightUpdate, bucket_tensors, iter_weights, own_storage
from awares_rl.learner.worker import LearnerWorker
from awares_rl.models import load_processor
from awares_rl.models.config import ModelConfig
from awares_rl.rollout.config import RolloutConfig
from awares_rl.rollout.worker import RolloutWorker
from cluster.actor_group import ActorGroup
from tests.test_learner import OPTIM, sequences

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"


def is_visual(name: str) -> bool:
    return name.startswith(("visual.", "model.visual."))


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_views_are_sent_without_their_whole_storage():
    """A parameter that is a view into a flat buffer (DeepSpeed's) pickles its whole buffer; what
    publish puts is a copy of the view alone, equal to it. A tensor alone in its storage is not copied."""
    import pickle

    flat = torch.arange(100_000, dtype=torch.float32)
    view = flat[1000:1100].view(10, 10)
    alone = own_storage(view)
    assert torch.equal(alone, view) and alone.untyped_storage().nbytes() == 400
    assert len(pickle.dumps(alone)) < 2_000 < 400_000 < len(pickle.dumps(view))
    whole = torch.ones(3, 4)
    assert own_storage(whole).data_ptr() == whole.data_ptr()  # the same memory: no copy


def test_bucket_tensors_cuts_in_order():
    t = {n: torch.zeros(k) for n, k in [("a", 10), ("b", 10), ("c", 30), ("d", 5)]}  # fp32: 40, 40, 120, 20 bytes
    buckets = bucket_tensors(t.items(), bucket_bytes=100)
    assert [[n for n, _ in b] for b in buckets] == [["a", "b"], ["c"], ["d"]]  # c alone: larger than a bucket
    assert bucket_tensors([], 100) == []


def model_weights(model) -> dict[str, torch.Tensor]:
    return checkpoint_names(model, {n: p.detach() for n, p in model.named_parameters()})


def optimizer_numel(worker) -> int:
    """Parameters the worker's optimizer holds state for (DeepSpeed ZeRO: its fp16/32 groups)."""
    if worker.cfg.backend == "deepspeed":
        return sum(p.numel() for g in worker.backend.optimizer.bit16_groups for p in g)
    return sum(p.numel() for p, s in worker.optimizer.state.items() if s)


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_frozen_vision_is_kept_and_not_synced(backend, ray_session, tiny_dir):
    cfg = LearnerConfig(backend=backend, zero_stage=2, freeze_vision=True, micro_batch_size=2, sync_bucket_mb=0.05)
    learner = ActorGroup(LearnerWorker, 1, str(tiny_dir), cfg, OPTIM, cpus_per_actor=1)
    before = dict(learner.call("named_weights", False)[0])
    seqs = sequences(load_processor(tiny_dir), 2)
    for _ in range(2):
        learner.call_split("sft_step", seqs)
    after = dict(learner.call("named_weights", False)[0])
    visual = {n for n in before if is_visual(n)}
    language = set(before) - visual
    assert visual and all(torch.equal(before[n], after[n]) for n in visual)
    assert any(not torch.equal(before[n], after[n]) for n in language)
    lm_numel = sum(after[n].numel() for n in language)
    assert ray.get(learner.actors[0].__ray_call__.remote(optimizer_numel)) == lm_numel  # no ViT state

    update = learner.call("publish_weights", 7)[0]  # the buckets are put by the learner actor
    assert isinstance(update, WeightUpdate) and update.version == 7
    assert {n for names in update.names for n in names} == language  # the ViT is not sent
    assert update.bytes == nbytes(after[n] for n in language) and update.num_tensors == len(language)
    assert len(update.buckets) > 1  # 0.05 MB buckets

    worker = RolloutWorker(RolloutConfig(backend="hf"), ModelConfig(), str(tiny_dir))  # fetches from the store
    assert worker.load_weights(update, 7) > 0 and worker.version() == 7
    synced = model_weights(worker.engine.model)
    assert set(synced) == set(after)
    assert all(torch.equal(synced[n], after[n]) for n in after)  # LM synced, ViT the start model's
    with pytest.raises(TypeError, match="WeightUpdate"):
        next(iter_weights([("lm_head.weight", after["lm_head.weight"])]))
    learner.shutdown()


def test_grpo_logs_sync_bytes_of_the_language_model(ray_session, tmp_path, tool_model_dir):
    cfg = load_recipe(RECIPE, [  # sized to the module's 2-CPU Ray: the learner in the driver
        f"run.out_dir={tmp_path}", "run.name=s", "data.n_train=4", "rollout.backend=hf", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "rollout.cpus_per_worker=0.5", "grpo.steps=1", "grpo.prompts_per_step=2",
        "grpo.kl_coef=0", "grpo.mini_batches=1", "grpo.lr=1e-3", "learner.backend=torch", "learner.use_ray=false",
        "learner.freeze_vision=true", "learner.sync_bucket_mb=0.1", "logging.wandb=false",
        "reward.cpus_per_worker=0.5",
    ])
    out = GRPOTrainer(cfg, start_model=tool_model_dir).fit()
    (row,) = [json.loads(line) for line in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    start, end = load_file(str(tool_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    language = [n for n in start if not is_visual(n)]
    assert row["sync/bytes"] == nbytes(start[n] for n in language) and row["sync/tensors"] == len(language)
    assert row["sync/seconds"] >= row["sync/load_s"] > 0
    assert all(torch.equal(start[n], end[n]) for n in start if is_visual(n))
