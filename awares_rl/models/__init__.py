"""Model loading: real checkpoints from a local path, or the embedded tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from awares_rl.models.config import ModelConfig
from awares_rl.models.family import ModelFamily, family_of, get_family

__all__ = ["ModelFamily", "family_of", "get_family", "load_policy", "load_processor", "processor_size"]


def processor_size(path: str | Path, model: ModelConfig | None = None) -> dict[str, int] | None:
    """The image processor's ``size`` for the checkpoint at ``path`` under ``model``'s visual-token
    bounds (its family's token_px, from config.json); None: the checkpoint's own."""
    if model is None or model.min_visual_tokens is None:
        return None
    from transformers import AutoConfig

    return model.pixel_bounds(family_of(AutoConfig.from_pretrained(str(path), local_files_only=True)).token_px)


def load_processor(path: str | Path, model: ModelConfig | None = None):
    """AutoProcessor from a local directory (no hub access), resizing images within ``model``'s
    ``min_visual_tokens`` / ``max_visual_tokens`` when they are set (``processor_size``)."""
    from transformers import AutoProcessor

    size = processor_size(path, model)
    kwargs = {"size": size} if size else {}
    return AutoProcessor.from_pretrained(str(path), local_files_only=True, **kwargs)


def load_policy(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A model of any registered family (Qwen2.5-VL, Qwen3-VL) from a local directory.

    ``attn_implementation="flash_attention_2"`` needs the [gpu] extra and a CUDA device.
    """
    from transformers import AutoModelForImageTextToText

    if attn_implementation == "flash_attention_2" and not torch.cuda.is_available():
        raise RuntimeError("flash_attention_2 needs a CUDA GPU; use model.attn_implementation=sdpa on CPU")
    return AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
        local_files_only=True,
    )
