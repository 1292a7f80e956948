"""Model loading: real checkpoints from a local path, or the embedded tiny model."""

from __future__ import annotations

from pathlib import Path

import torch


def load_processor(path: str | Path):
    """AutoProcessor from a local directory (no hub access)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), local_files_only=True)


def load_policy(path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa"):
    """A Qwen2.5-VL (or any image-text-to-text) model from a local directory.

    ``attn_implementation="flash_attention_2"`` needs the [gpu] extra and a CUDA device.
    """
    from transformers import AutoModelForImageTextToText

    if attn_implementation == "flash_attention_2" and not torch.cuda.is_available():
        raise RuntimeError("flash_attention_2 needs a CUDA GPU; use model.attn_implementation=sdpa on CPU")
    return AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
        local_files_only=True,
    )
