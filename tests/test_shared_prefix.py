"""The shared-prefix forward (``learner/prefix.py``): a group's common prompt runs once, its KV
cache carries the G continuations — at the padded batch's logprobs and gradients, both families."""

from __future__ import annotations

import pytest
import torch

from awares_rl.learner.batch import PixelCache, collate_sequences, trajectory_to_sequence
from awares_rl.learner.forward import sequence_logprobs
from awares_rl.learner.prefix import image_runs, prefix_plan
from awares_rl.models.tiny import TinyModelConfig, build_tiny
from tests.conftest import DIRECT_Q, TOOL_Q, make_image

CALL_A, CALL_B = "GET_CROPS: ['0','4']", "GET_CROPS: ['2']"


def group_batch(processor):
    """Five sequences on one image and question (direct answers, two different crop calls: one
    shared prompt, different continuations), then one on another image (a lone row)."""
    image, other = make_image(3, (448, 512)), make_image(4, (512, 448))
    turns = [["blue"], [CALL_A, "red"], ["red"], [CALL_B, "blue"], [CALL_A, "blue"]]
    seqs = [trajectory_to_sequence(processor, {"id": f"g{i}", "question": TOOL_Q, "turns": t}, image=image)
            for i, t in enumerate(turns)]
    seqs.append(trajectory_to_sequence(processor, {"id": "lone", "question": DIRECT_Q, "turns": ["blue"]},
                                       image=other))
    return collate_sequences(seqs, processor, dedupe_images=True, cache=PixelCache())


def logprobs_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    targets = batch["loss_weights"][:, 1:] != 0
    lp = sequence_logprobs(model, batch, targets, share_prefix=share)
    (lp * torch.linspace(0.5, 1.5, lp.shape[1])).sum().backward()  # a loss weighing every position
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_shared_prefix_equals_padded_batch(family):
    model, processor = build_tiny(TinyModelConfig(seed=2, family=family), [TOOL_Q, DIRECT_Q, "blue", "red"])
    model.train()
    batch = group_batch(processor)
    targets = batch["loss_weights"][:, 1:] != 0
    runs = image_runs(batch["input_ids"], model.config.image_token_id)
    plan = prefix_plan(batch["input_ids"], batch["attention_mask"].sum(1).tolist(), targets, runs,
                       batch["image_index"].tolist())
    cut = plan[0].end
    # the prompt once; its continuations in a pass per number of crops (0, 2 and 1 here)
    assert [(p.rows, p.prefix_of, p.after) for p in plan] == [
        ((0,), (0, 1, 2, 3, 4), -1), ((0, 2), (), 0), ((1, 4), (), 0), ((3,), (), 0), ((5,), (), -1)]
    assert plan[1].start == plan[2].start == plan[3].start == cut and bool(targets[0, cut - 1]) and not targets[0, : cut - 1].any()
    plain_lp, plain_g = logprobs_and_grads(model, batch, share=False)
    shared_lp, shared_g = logprobs_and_grads(model, batch, share=True)
    assert (plain_lp != 0).sum() == targets.sum() and plain_lp.abs().max() > 0.1
    assert torch.allclose(shared_lp, plain_lp, atol=1e-5), (shared_lp - plain_lp).abs().max()
    assert plain_g.keys() == shared_g.keys() and any(n.startswith("model.visual") for n in plain_g)
    for name, g in plain_g.items():
        assert torch.allclose(shared_g[name], g, atol=1e-5, rtol=1e-4), name


def test_plan_keeps_rows_apart_when_their_images_differ():
    """Same prompt tokens but another image (equal pad runs) is not a shared prefix; nor is a row
    with no target."""
    ids = torch.tensor([[1, 9, 9, 2, 5, 6], [1, 9, 9, 2, 7, 0], [1, 9, 9, 2, 5, 6]])
    targets = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    runs = image_runs(ids, 9)
    assert runs == [(0, 1, 3), (1, 1, 3), (2, 1, 3)]
    assert [(p.rows, p.start, p.end) for p in prefix_plan(ids, [6, 5, 6], targets, runs, [0, 1, 0])] == [
        ((0, 1, 2), 0, 6)]
    assert [(p.rows, p.start, p.end, p.prefix_of) for p in prefix_plan(ids, [6, 5, 6], targets, runs, [0, 0, 0])] == [
        ((0,), 0, 3, (0, 1)), ((0, 1), 3, 6, ()), ((2,), 0, 6, ())]
