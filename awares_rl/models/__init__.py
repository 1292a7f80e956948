"""Model loading: real checkpoints from a local path, or the embedded tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from awares_rl.models.family import ModelFamily, family_of, get_family

__all__ = ["ModelFamily", "family_of", "get_family", "load_policy", "load_processor"]


def load_processor(path: str | Path):
    """AutoProcessor from a local directory (no hub access)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), local_files_only=True)


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
