"""Pretraining pieces: conversations with several images and turn weights as the learner's token
sequences (the same batch the processor builds), the fast vision path, plain-VQA scoring, and a
two-step smoke run of ``awares-rl pretrain`` that reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl.algo import weighted_token_nll
from awares_rl.learner.batch import MODEL_KEYS, model_inputs
from awares_rl.learner.conversation import (
    Conversation,
    assistant_turn,
    conversation_to_sequence,
    multi_qa_conversation,
    user_turn,
    vqa_conversation,
)
from awares_rl.learner.fast_vision import fast_vision
from awares_rl.models.tiny import TinyModelConfig, build_tiny
from awares_rl.pretrain import PretrainConfig, collate, fit, lr_at, training_stream
from awares_rl.vqa import accuracy_by_group
from data_pipeline.config import SynthConfig
from data_pipeline.scene import vocab_texts
from reward.judges import exact_match, normalize_answer


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(TinyModelConfig(), ["What pattern is in the red panel? horizontal vertical"])


def _img(seed: int, size=(224, 280)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _conversations() -> list[Conversation]:
    """One image; a tool call and two crops in one turn (weights 5, 1); three QAs about one image
    shown only in the first turn, with their own weights."""
    tool_call = Conversation(
        [user_turn("What pattern is in the red panel?"), assistant_turn("GET_CROPS: ['3']"),
         user_turn("Here are the crops.", n_images=2), assistant_turn("vertical")],
        [_img(0), _img(1, (112, 140)), _img(2, (140, 112))],
        turn_weights=[5.0, 1.0],
    )
    multi = multi_qa_conversation(_img(3, (280, 224)), [("What pattern is in the red panel?", "horizontal"),
                                                        ("Which crop shows the red panel?", "2"), ("Q?", "vertical")])
    multi.turn_weights = [1.0, 2.5, 0.5]
    return [vqa_conversation(_img(4, (336, 224)), "What pattern is in the red panel?", "horizontal"), tool_call, multi]


def _weighted_turns(batch, tokenizer, row: int) -> list[tuple[str, float]]:
    """(text, weight) of each run of equally weighted tokens of ``row`` (weight 0 dropped)."""
    runs: list[tuple[list[int], float]] = []
    w_prev = 0.0
    for t, w in zip(batch["input_ids"][row].tolist(), batch["loss_weights"][row].tolist()):
        if w and w == w_prev:
            runs[-1][0].append(t)
        elif w:
            runs.append(([t], w))
        w_prev = w
    return [(tokenizer.decode(ids, skip_special_tokens=False), w) for ids, w in runs]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_conversations_collate_to_the_processors_batch(family):
    """The learner's one collate of the conversations' token sequences == the processor's own
    batch of the chat-template texts; the weights are each assistant turn's, on its text and end."""
    _, processor = build_tiny(TinyModelConfig(family=family), ["What pattern is in the red panel? horizontal vertical"])
    convs = _conversations()
    batch = collate(convs, processor)
    reference = processor(
        text=[processor.apply_chat_template(c.messages, tokenize=False) for c in convs],
        images=[im for c in convs for im in c.images], padding=True, padding_side="right",
        return_tensors="pt", return_mm_token_type_ids=True,
    )
    assert set(MODEL_KEYS) <= set(reference)
    for key in MODEL_KEYS:
        assert torch.equal(batch[key], reference[key]), key
    assert batch["image_grid_thw"].shape == (5, 3) and batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    for row, conv in enumerate(convs):
        answers = [m["content"][0]["text"] + "<|im_end|>" for m in conv.messages if m["role"] == "assistant"]
        weights = conv.turn_weights or [1.0] * len(answers)
        assert _weighted_turns(batch, processor.tokenizer, row) == list(zip(answers, weights))


def test_conversation_to_sequence_rejects_mismatched_images_and_weights(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="1 image parts but 2 images"):
        conversation_to_sequence(Conversation([user_turn("Q?")], [_img(0), _img(1)]), processor)
    conv = Conversation([user_turn("Q?"), assistant_turn("a")], [_img(0)], turn_weights=[1, 2])
    with pytest.raises(ValueError, match="2 turn_weights for 1 assistant"):
        conversation_to_sequence(conv, processor)


def test_fast_vision_matches_the_stock_path(tiny):
    model, processor = tiny
    convs = [multi_qa_conversation(_img(i, (224 + 56 * i, 224)), [("Q?", "vertical")]) for i in range(3)]
    batch = collate(convs, processor)

    def loss_and_grads():
        model.zero_grad()
        loss, _ = weighted_token_nll(model(**model_inputs(batch)).logits, batch["input_ids"],
                                     batch["loss_weights"])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref_loss, ref_grads = loss_and_grads()
    with fast_vision(model):
        loss, grads = loss_and_grads()
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(grads, ref_grads))
    assert "forward" not in model.model.visual.patch_embed.__dict__  # undone on exit
    assert "flash" not in model.model.visual.config._attn_implementation


def test_training_stream_mixes_views_and_panels():
    cfg = PretrainConfig(locate_per_image=2, synth=SynthConfig(max_side=576))
    stream = training_stream(cfg)
    convs = [next(stream) for _ in range(60)]
    widths = {c.images[0].width for c in convs}
    assert min(widths) < 448 and max(widths) >= 448  # low-res views / crops and full images
    assert all(c.assistant_turns() >= 1 and len(c.images) == 1 for c in convs)
    located = [c for c in convs if any("Which crop" in str(m["content"]) for m in c.messages)]
    assert 0 < len(located) < len(convs)  # grounding turns on full / low views, not on crops


def test_training_stream_without_grounding():  # the default
    stream = training_stream(PretrainConfig(synth=SynthConfig(max_side=448)))
    assert not any("Which crop" in str(next(stream).messages) for _ in range(20))


def test_answer_normalisation_and_grouping():
    assert normalize_answer(" Vertical. ") == "vertical" and exact_match(["CHECKER!"], [["checker"]]) == [1.0]
    table = accuracy_by_group([True, False, True], ["small", "small", "large"])
    assert table["all"] == {"accuracy": 66.67, "n": 3} and table["small"]["accuracy"] == 50.0


def test_lr_schedule():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(100, cfg) == pytest.approx(1e-4)


def test_pretrain_two_steps_saves_a_reloadable_checkpoint(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = PretrainConfig(out_dir=str(tmp_path), steps=2, batch_size=2, eval_samples=4,
                         eval_batch_size=4, threads=1, synth=SynthConfig(max_side=448))
    path = fit(cfg)
    log = json.loads((tmp_path / "pretrain_log.json").read_text())
    assert log["steps_done"] == 2 and all(np.isfinite(p["loss"]) for p in log["curve"])
    assert set(log["eval"]) == {"full", "low", "crop", "locate_low"} and log["eval"]["full"]["tier"]["all"]["n"] == 4
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    fresh, _ = build_tiny(cfg.model, vocab_texts(cfg.synth))  # the same init fit() started from
    before, after = fresh.state_dict(), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if "visual" in k)
    assert processor.tokenizer.chat_template


def test_batch_mixes_grounding_only_conversations():
    from awares_rl.pretrain import next_conversations

    cfg = PretrainConfig(batch_size=24, locate_only_share=0.34)
    batch = next_conversations(iter(["read"] * 99), iter(["where"] * 99), cfg)
    assert batch.count("where") == 8 and batch.count("read") == 16  # round(0.34 * 24) = 8
    with pytest.raises(ValueError, match="locate_only_share"):
        PretrainConfig(locate_only_share=1.0)
