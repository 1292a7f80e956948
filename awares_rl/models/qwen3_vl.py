"""Qwen3-VL: patch 16, merge 2 (32 px a visual token), interleaved M-RoPE, DeepStack, and a
learned absolute position table in the ViT (``visual.pos_embed``).

The tiny model initialises that table with a 2D sin-cos embedding instead of N(0, 0.02): with it,
a freshly built tiny Qwen3-VL tells which quadrant a panel is in within ~50 steps, where the
default init (and tiny Qwen2.5-VL, which has no absolute table) stayed near chance for hundreds
(README, "Where the tiny model looks").
"""

from __future__ import annotations

import math

import torch
from transformers import (
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from awares_rl.models.family import ModelFamily, register
from awares_rl.models.tiny import mrope_section, text_config


def tiny_config(cfg, ids: dict[str, int], vocab_size: int) -> Qwen3VLConfig:
    """The tiny model's config; ``cfg`` is a ``TinyModelConfig``."""
    rope = {"mrope_section": mrope_section(cfg), "mrope_interleaved": True}
    text = text_config(cfg, ids, vocab_size, rope)
    text["head_dim"] = cfg.text_hidden // cfg.text_heads
    vision = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
        num_heads=cfg.vision_heads, out_hidden_size=cfg.text_hidden, patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, num_position_embeddings=cfg.pos_grid**2,
        deepstack_visual_indexes=[min(1, cfg.vision_depth - 1)],
    )
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(grid * grid, dim) 2D sin-cos table, row-major (row y, column x) as ``pos_embed`` is laid
    out: the first half of the channels encodes y, the second x, each as sin | cos of
    ``dim // 4`` frequencies ``temperature ** (-k / (dim // 4))``."""
    if dim % 4:
        raise ValueError(f"a 2D sin-cos table needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def enc(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([enc(ys), enc(xs)], dim=1).float()


@torch.no_grad()
def init_tiny(model, cfg) -> None:
    """Set the ViT's position table to a 2D sin-cos embedding (``cfg.pos_embed_init="sincos"``)."""
    if cfg.pos_embed_init != "sincos":
        return
    table = model.model.visual.pos_embed.weight
    grid = math.isqrt(table.shape[0])
    table.copy_(cfg.pos_embed_scale * sincos_2d(grid, table.shape[1]))


FAMILY = register(ModelFamily(
    model_type="qwen3_vl", patch_size=16, merge_size=2, config_class=Qwen3VLConfig,
    model_class=Qwen3VLForConditionalGeneration, processor_class=Qwen3VLProcessor,
    video_processor_class=Qwen3VLVideoProcessor, tiny_config=tiny_config, init_tiny=init_tiny,
))
