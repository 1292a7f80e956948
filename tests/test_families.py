"""Model families: both tiny families build, save and reload (transformers and vLLM), greedy
2-turn episodes agree across engines, and family facts come from one registry."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from awares_rl.config import ConfigError, load_recipe
from awares_rl.core.tokens import image_token_counts
from awares_rl.models import family_of, load_policy
from awares_rl.models.family import families, get_family
from awares_rl.models.qwen3_vl import sincos_2d
from awares_rl.models.tiny import TinyModelConfig, build_tiny, save_tiny
from awares_rl.rollout import EpisodeRunner, SamplingConfig
from awares_rl.rollout.hf_engine import HFEngine
from tests.conftest import make_image, train_tool_model
from tests.test_engines import samples_and_images

FAMILIES = ("qwen3_vl", "qwen2_5_vl")


def test_registry_facts():
    assert set(families()) >= set(FAMILIES)
    assert get_family("qwen3_vl").token_px == 32 and get_family("qwen2_5_vl").token_px == 28
    assert get_family("qwen3_vl").side_step == 64 and get_family("qwen2_5_vl").side_step == 56
    with pytest.raises(ValueError, match="no registered model family"):
        get_family("llava")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_saves_and_reloads(family, tmp_path):
    out = save_tiny(tmp_path / family, TinyModelConfig(family=family), ["what is red?"])
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    fam = family_of(model)
    assert fam.model_type == family and fam is family_of(load_policy(out).config)
    assert type(processor) is fam.processor_class and type(model) is fam.model_class
    side = 7 * fam.token_px  # 7 x 7 visual tokens, exactly
    assert image_token_counts(processor.image_processor, [make_image(0, (side, side))]) == [49]
    built, _ = build_tiny(TinyModelConfig(family=family), ["what is red?"])
    for (name, a), (_, b) in zip(sorted(built.state_dict().items()), sorted(model.state_dict().items())):
        assert torch.equal(a, b), name


def test_sincos_position_table():
    table = sincos_2d(16, 64)  # rows y-major: entry y * 16 + x
    assert table.shape == (256, 64)
    assert torch.allclose(table[0, :8], torch.zeros(8))  # sin(0) of the y half at y = 0
    assert torch.equal(table[5 * 16 + 3, :32], table[5 * 16 + 9, :32])  # y half: same row
    assert torch.equal(table[5 * 16 + 3, 32:], table[11 * 16 + 3, 32:])  # x half: same column
    model, _ = build_tiny(TinyModelConfig(family="qwen3_vl"), ["x"])
    assert torch.equal(model.model.visual.pos_embed.weight.detach(), table)
    plain, _ = build_tiny(TinyModelConfig(family="qwen3_vl", pos_embed_init="normal"), ["x"])
    assert plain.model.visual.pos_embed.weight.std() < 0.05


def test_recipe_side_step_follows_the_family():
    with pytest.raises(ConfigError, match="synth.side_step=56"):
        load_recipe("recipes/tiny_cpu.yaml", ["tiny.family=qwen2_5_vl"])
    cfg = load_recipe("recipes/tiny_cpu.yaml", ["tiny.family=qwen2_5_vl", "synth.side_step=56",
                                                 "synth.min_side=448", "synth.max_side=672"])
    assert cfg.tiny.model_family.token_px == 28


@pytest.fixture(scope="module")
def qwen25_tool_model(tmp_path_factory):
    return train_tool_model(tmp_path_factory.mktemp("tool25"), family="qwen2_5_vl")


def test_qwen25_greedy_episodes_equal_across_engines(qwen25_tool_model):
    """The default family is covered by tests/test_engines.py; this is the other one."""
    from awares_rl.rollout.vllm_engine import VLLMEngine

    greedy = SamplingConfig(temperature=0, max_new_tokens=16)
    samples, images = samples_and_images()
    hf = HFEngine(str(qwen25_tool_model))
    a = EpisodeRunner(hf, hf.processor.tokenizer).run(samples, 1, greedy, images=images)
    engine = VLLMEngine(str(qwen25_tool_model), dtype="float32", max_model_len=2048, seed=0)
    try:
        b = EpisodeRunner(engine, engine.tokenizer).run(samples, 1, greedy, images=images)
    finally:
        engine.close()
    assert [e.turn_texts for e in a] == [e.turn_texts for e in b]
    assert a[0].turn_texts[0] == "GET_CROPS: ['0','4']" and a[0].final_answer == "red"
    assert all(max(abs(x - y) for x, y in zip(p.logprobs, q.logprobs)) < 1e-3 for p, q in zip(a, b))
