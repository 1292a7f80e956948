"""The paper's processor bounds (32 to 2048 visual tokens an image) in the GPU recipes reach the
processor of either family (28 px tokens on Qwen2.5-VL, 32 px on Qwen3-VL), both engines and
the token counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl import rollout
from awares_rl.cli import main
from awares_rl.config import load_recipe
from awares_rl.core.config_io import ConfigError
from awares_rl.core.tokens import image_token_counts
from awares_rl.models import load_processor
from awares_rl.models.tiny import TinyModelConfig, save_tiny

REPO = Path(__file__).resolve().parents[1]
GPU = {"qwen2_5_vl": REPO / "recipes/qwen25vl_7b_gpu.yaml", "qwen3_vl": REPO / "recipes/qwen3vl_8b_gpu.yaml"}
TOKEN_PX = {"qwen2_5_vl": 28, "qwen3_vl": 32}


@pytest.fixture(scope="module", params=sorted(GPU))
def family_dir(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    save_tiny(out, TinyModelConfig(family=request.param))
    return request.param, out


@pytest.mark.parametrize("family", sorted(GPU))
def test_gpu_recipes_state_the_paper_bounds(family, capsys):
    cfg = load_recipe(GPU[family])
    assert (cfg.model.min_visual_tokens, cfg.model.max_visual_tokens) == (32, 2048)
    px = TOKEN_PX[family] ** 2
    assert cfg.model.pixel_bounds(TOKEN_PX[family]) == {"shortest_edge": 32 * px, "longest_edge": 2048 * px}
    assert main(["config", "--recipe", str(GPU[family])]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["model"]
    assert (shown["min_visual_tokens"], shown["max_visual_tokens"]) == (32, 2048)


def test_the_bounds_reach_the_processor(family_dir):
    family, path = family_dir
    model = load_recipe(GPU[family]).model
    own, bounded = load_processor(path), load_processor(path, model)
    px = TOKEN_PX[family] ** 2
    assert bounded.image_processor.size["shortest_edge"] == 32 * px
    assert bounded.image_processor.size["longest_edge"] == 2048 * px
    big, small = Image.new("RGB", (4000, 3000)), Image.new("RGB", (60, 40))
    assert image_token_counts(own.image_processor, [big])[0] <= 1024  # the tiny model's own cap
    counts = image_token_counts(bounded.image_processor, [big, small])
    assert 1024 < counts[0] <= 2048 and counts[1] >= 32
    grid = bounded.image_processor(images=[big], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) // 4 == counts[0]  # the pixels the model sees agree with the count


def test_both_engines_get_the_bounds(family_dir, monkeypatch):
    family, path = family_dir
    cfg = load_recipe(GPU[family], ["rollout.backend=hf", "rollout.device=cpu", "model.dtype=float32",
                                     "model.attn_implementation=sdpa"])  # the GPU recipe, on this CPU
    engine = rollout.make_engine(cfg.rollout, cfg.model, path)
    assert engine.processor.image_processor.size["longest_edge"] == 2048 * TOKEN_PX[family] ** 2

    seen = {}

    class FakeVLLM:
        def __init__(self, model_path, **kwargs):
            seen.update(kwargs)

    import awares_rl.rollout.vllm_engine as vllm_engine

    monkeypatch.setattr(rollout, "vllm_available", lambda: (True, ""))
    monkeypatch.setattr(vllm_engine, "VLLMEngine", FakeVLLM)
    rollout.make_engine(load_recipe(GPU[family], ["rollout.device=cpu"]).rollout, cfg.model, path)
    assert seen["image_size"] == cfg.model.pixel_bounds(TOKEN_PX[family])


@pytest.mark.parametrize("override, message", [
    (["model.min_visual_tokens=32"], "set together with model.max_visual_tokens"),
    (["model.min_visual_tokens=64", "model.max_visual_tokens=32"], r"in \[1, model.max_visual_tokens=32\]"),
])
def test_bad_bounds_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(REPO / "recipes/tiny_cpu.yaml", override)


@pytest.mark.slow  # starts vLLM (about 100 s on 2 loaded cores)
def test_vllm_resizes_within_the_bounds(tiny_dir):
    """vLLM (CPU here) expands an image to the bounded processor's count, not the checkpoint's."""
    from awares_rl.core.engine import GenRequest, SamplingConfig
    from awares_rl.core.tokens import IMAGE_TOKEN, first_turn_ids
    from awares_rl.models import processor_size
    from awares_rl.models.config import ModelConfig
    from awares_rl.rollout.vllm_engine import VLLMEngine

    model = ModelConfig(min_visual_tokens=16, max_visual_tokens=64)
    big = Image.new("RGB", (1200, 900), "white")
    own, bounded = load_processor(tiny_dir), load_processor(tiny_dir, model)
    expected = image_token_counts(bounded.image_processor, [big])[0]
    assert expected <= 64 < image_token_counts(own.image_processor, [big])[0]
    engine = VLLMEngine(str(tiny_dir), max_model_len=2048, image_size=processor_size(tiny_dir, model))
    try:
        tok = engine.tokenizer
        (out,) = engine.generate([GenRequest(first_turn_ids(tok, "What?"), [big])], SamplingConfig(0.0, 1.0, 2))
        assert out.prompt_ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == expected
    finally:
        engine.close()
