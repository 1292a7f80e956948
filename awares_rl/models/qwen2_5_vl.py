"""Qwen2.5-VL: patch 14, merge 2 (28 px a visual token); rotary positions only in the ViT."""

from __future__ import annotations

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLVideoProcessor,
)

from awares_rl.models.family import ModelFamily, register
from awares_rl.models.tiny import mrope_section, text_config


def tiny_config(cfg, ids: dict[str, int], vocab_size: int) -> Qwen2_5_VLConfig:
    """The tiny model's config; ``cfg`` is a ``TinyModelConfig``."""
    text = text_config(cfg, ids, vocab_size, {"mrope_section": mrope_section(cfg)})
    vision = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_heads=cfg.vision_heads, out_hidden_size=cfg.text_hidden, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, window_size=112, fullatt_block_indexes=[cfg.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def init_tiny(model, cfg) -> None:
    """Nothing beyond transformers' init: the ViT has no absolute position table."""


FAMILY = register(ModelFamily(
    model_type="qwen2_5_vl", patch_size=14, merge_size=2, config_class=Qwen2_5_VLConfig,
    model_class=Qwen2_5_VLForConditionalGeneration, processor_class=Qwen2_5_VLProcessor,
    video_processor_class=Qwen2VLVideoProcessor, tiny_config=tiny_config, init_tiny=init_tiny,
))
