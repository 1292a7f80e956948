"""The recipe's ``model`` section: which checkpoint, in which dtype, with which attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # local model dir (e.g. Qwen2.5-VL-7B-Instruct); None = embedded tiny
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # fa2: GPU only
