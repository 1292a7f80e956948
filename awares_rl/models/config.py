"""The recipe's ``model`` section: which checkpoint, in which dtype, with which attention, and
the processor's bounds on the visual tokens of one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from awares_rl.core.config_io import require


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # local model dir (e.g. Qwen2.5-VL-7B-Instruct); None = embedded tiny
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # fa2: GPU only
    # The processor resizes each image (the low-res view, each crop, the full image) to between
    # these many visual tokens of the family's token_px (28 px Qwen2.5-VL, 32 px Qwen3-VL): the
    # paper's eval uses 32 and 2048 (min_pixels = 32*28*28, max_pixels = 2048*28*28 on
    # Qwen2.5-VL). null and null: the checkpoint's own preprocessor_config.json.
    min_visual_tokens: int | None = None
    max_visual_tokens: int | None = None

    def __post_init__(self) -> None:
        lo, hi = self.min_visual_tokens, self.max_visual_tokens
        require((lo is None) == (hi is None), "model.min_visual_tokens", lo,
                "set together with model.max_visual_tokens (both, or neither for the checkpoint's own)")
        require(lo is None or 1 <= lo <= hi, "model.min_visual_tokens", lo, f"in [1, model.max_visual_tokens={hi}]")

    def pixel_bounds(self, token_px: int) -> dict[str, int] | None:
        """The processor's ``size`` (``shortest_edge`` / ``longest_edge``: pixels, as min_pixels /
        max_pixels) for a family of ``token_px``; None: keep the checkpoint's."""
        if self.min_visual_tokens is None or self.max_visual_tokens is None:
            return None
        area = token_px * token_px
        return {"shortest_edge": self.min_visual_tokens * area, "longest_edge": self.max_visual_tokens * area}
