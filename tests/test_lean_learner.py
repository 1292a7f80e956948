"""The lean learner path: each distinct image processed and run through the vision tower once
(a GRPO group shares its low-res view, crops repeat), micro-batches ordered by shared image and
length, processed pixels cached across passes — at the same loss and gradients as the plain path."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from awares_rl.core.crops import cut_crops
from awares_rl.learner.batch import (
    PixelCache,
    TokenSequence,
    batch_order,
    collate_sequences,
    image_key,
    model_inputs,
    trajectory_to_sequence,
)
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.forward import sequence_logprobs
from awares_rl.learner.ppo import PPOClip
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_policy, load_processor
from awares_rl.rollout import EpisodeRunner, SamplingConfig
from awares_rl.rollout.hf_engine import HFEngine
from tests.conftest import DIRECT_Q, TOOL_Q, make_image

TOOL = {"id": "t", "question": TOOL_Q, "turns": ["GET_CROPS: ['0','4']", "red"], "crop_ids": [0, 4]}
DIRECT = {"id": "d", "question": DIRECT_Q, "turns": ["blue"], "crop_ids": []}


def groups(processor, group_size: int = 3) -> list[TokenSequence]:
    """Two GRPO-like groups: G sequences per sample sharing the low-res view OBJECT, the crops
    re-cut per sequence (equal content, other objects), random advantages and rollout logprobs."""
    rng, out = random.Random(0), []
    for k, traj in enumerate((TOOL, DIRECT)):
        image = make_image(k, (448, 512))
        base = trajectory_to_sequence(processor, traj, image=image)
        for g in range(group_size):
            images = [base.images[0], *cut_crops(image, traj["crop_ids"])]
            out.append(replace(base, images=images, advantage=rng.uniform(-1, 1), sample_id=f"{k}#{g}",
                               loss_weights=[float(w != 0) for w in base.loss_weights],
                               rollout_logprobs=[rng.uniform(-3, 0) for _ in base.token_ids]))
    return out


def loss_and_grads(model, batch, objective) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = objective(sequence_logprobs(model, batch, objective.targets(batch)), batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_dedup_path_equals_plain_path(tiny_dir):
    """Same model, same batch: the deduplicated collate + one vision pass per distinct image gives
    the plain path's loss to 1e-5 and its gradients (vision tower included) to 1e-5."""
    processor, model = load_processor(str(tiny_dir)), load_policy(str(tiny_dir), "float32", "sdpa")
    seqs = groups(processor)
    plain = collate_sequences(seqs, processor)
    lean = collate_sequences(seqs, processor, dedupe_images=True, cache=PixelCache())
    everything = processor.image_processor(images=[im for s in seqs for im in s.images], return_tensors="pt")
    assert torch.equal(plain["pixel_values"], everything["pixel_values"])  # the plain path is the stock one
    assert torch.equal(lean["image_grid_thw"], everything["image_grid_thw"])
    assert lean["image_index"].tolist() == [0, 1, 2] * 3 + [3] * 3  # 12 images, 4 distinct
    assert lean["pixel_values"].shape[0] * 3 == plain["pixel_values"].shape[0]
    with pytest.raises(ValueError, match="model_forward"):
        model_inputs(lean)
    objective = PPOClip(tis_cap=2.0)
    loss_plain, grads_plain = loss_and_grads(model, plain, objective)
    loss_lean, grads_lean = loss_and_grads(model, lean, objective)
    assert abs(loss_plain) > 1e-3 and abs(loss_lean - loss_plain) < 1e-5
    assert grads_plain.keys() == grads_lean.keys() and any(n.startswith("model.visual") for n in grads_lean)
    for name, g in grads_plain.items():
        assert torch.allclose(grads_lean[name], g, atol=1e-5, rtol=1e-4), name


def test_batch_order_groups_shared_views_and_lengths(tiny_dir):
    processor = load_processor(str(tiny_dir))
    seqs = groups(processor)
    shuffled = [seqs[i] for i in (4, 0, 5, 2, 3, 1)]
    order = batch_order(shuffled)
    ordered = [shuffled[i] for i in order]
    views = [id(s.images[0]) for s in ordered]
    assert len(set(views[:3])) == len(set(views[3:])) == 1 and views[0] != views[3]  # each group together
    assert sorted(len(s.images) for s in ordered) == [1, 1, 1, 3, 3, 3]
    assert sorted(order) == list(range(6))


def test_pixel_cache_processes_each_image_once_and_evicts():
    image, other = make_image(1, (64, 64)), make_image(2, (64, 64))
    assert image_key(image) == image_key(image.copy()) != image_key(other)
    cache = PixelCache(max_bytes=10)
    cache.put(b"a", torch.zeros(4), torch.tensor([1, 2, 2]))
    cache.put(b"b", torch.zeros(4), torch.tensor([1, 2, 2]))  # over 10 bytes: "a" goes
    assert cache.get(b"a") is None and cache.get(b"b") is not None


def test_worker_logprobs_keep_input_order(tiny_dir):
    """eval_logprobs of a batch (reordered, deduplicated, micro-batched inside) equals each
    sequence scored alone, in the caller's order."""
    processor = load_processor(str(tiny_dir))
    seqs = groups(processor)
    seqs = [seqs[i] for i in (4, 0, 5, 2, 3, 1)]
    worker = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=4),
                           OptimSettings(lr=1e-3, total_steps=1))
    together = worker.eval_logprobs(seqs)
    for seq, lp in zip(seqs, together):
        alone = worker.eval_logprobs([seq])[0]
        assert len(lp) == len(seq.token_ids) and max(abs(a - b) for a, b in zip(lp, alone)) < 1e-5


def test_runner_shares_views_and_crops_within_a_group(tiny_dir):
    engine = HFEngine(str(tiny_dir))
    sample = SimpleNamespace(id="s", question=TOOL_Q, answers=["x"], metric="exact", needs_high_res=None)
    eps = EpisodeRunner(engine, engine.processor.tokenizer).run(
        [sample], 3, SamplingConfig(temperature=1.0, max_new_tokens=4), images=[make_image(0)])
    assert len({id(ep.images[0]) for ep in eps}) == 1
    assert eps[0].token_ids[:20] == eps[1].token_ids[:20]  # the same prompt ids


def test_thread_counts_are_validated_and_resolved():
    from awares_rl.core.config_io import ConfigError
    from awares_rl.rollout.config import RolloutConfig
    from cluster.resources import torch_threads

    assert torch_threads(0, 1.0) == 1 and torch_threads(0, 2.5) == 2 and torch_threads(3, 1.0) == 3
    assert torch_threads(-1, 1.0) == (os.cpu_count() or 1)
    for section in (LearnerConfig, RolloutConfig):
        with pytest.raises(ConfigError, match=r"threads=-2: must be 0 \(= cpus_per_worker\), -1"):
            section(threads=-2)
