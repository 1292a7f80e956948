"""What differs between model families, behind one small interface, chosen by ``model_type``.

The rest of the code never asks "is this Qwen2.5-VL or Qwen3-VL?": it asks the family of a
config, model or ``model_type`` string (``family_of``) for what it needs — the pixels per visual
token (patch x merge: 28 for Qwen2.5-VL, 32 for Qwen3-VL), the vision tower, and, for the
embedded tiny model, its transformers config, classes and initialisation. One module per family
(``qwen2_5_vl.py``, ``qwen3_vl.py``) registers itself here, as vLLM's model registry and
transformers' ``Auto*`` classes do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelFamily:
    """One VLM family: its transformers classes and the facts the pipeline depends on."""

    model_type: str  # the config's ``model_type`` ("qwen2_5_vl", "qwen3_vl")
    patch_size: int  # ViT patch side (px)
    merge_size: int  # patches merged per side into one visual token
    config_class: type
    model_class: type
    processor_class: type
    video_processor_class: type
    # (tiny sizes, special-token ids, vocab size) -> the transformers config of the tiny model
    tiny_config: Callable[[Any, dict[str, int], int], Any]
    # in-place initialisation of a freshly built tiny model (e.g. a position table); may be a no-op
    init_tiny: Callable[[Any, Any], None]

    @property
    def token_px(self) -> int:
        """Side (px) of the image square that becomes one visual token."""
        return self.patch_size * self.merge_size

    @property
    def side_step(self) -> int:
        """Synthetic image sides are multiples of this (2 x token_px), so that the 0.5 low-res view
        and every crop of the crop set are whole visual tokens."""
        return 2 * self.token_px

    def rope_positions(self, model, batch) -> torch.Tensor:
        """(3, B, T) M-RoPE positions of a collated batch (``input_ids``, ``attention_mask``,
        ``mm_token_type_ids``, ``image_grid_thw`` per image): what the model's forward computes
        for the whole sequences, so that passes over parts of them (``learner/prefix.py``) can
        be given theirs. Both Qwen families take the same keywords."""
        return model.model.get_rope_index(
            input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"), attention_mask=batch["attention_mask"])[0]

    def vision_tower(self, model) -> torch.nn.Module:
        """The vision encoder of a loaded model (``model.model.visual`` in both Qwen families)."""
        return model.model.visual


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry (one call per family module)."""
    _FAMILIES[family.model_type] = family
    return family


def families() -> dict[str, ModelFamily]:
    """model_type -> family, for every registered family."""
    _load_builtin()
    return dict(_FAMILIES)


def get_family(model_type: str) -> ModelFamily:
    """The family registered for ``model_type``; ValueError names the known ones."""
    _load_builtin()
    if model_type not in _FAMILIES:
        raise ValueError(f"model_type {model_type!r} has no registered model family; known: "
                         f"{sorted(_FAMILIES)} (add a module to awares_rl/models/ and register it)")
    return _FAMILIES[model_type]


def family_of(obj: Any) -> ModelFamily:
    """The family of a transformers config, a model (its ``config``) or a ``model_type`` string."""
    if isinstance(obj, str):
        return get_family(obj)
    config = getattr(obj, "config", obj)
    return get_family(getattr(config, "model_type", type(config).__name__))


def _load_builtin() -> None:
    from awares_rl.models import qwen2_5_vl, qwen3_vl  # noqa: F401  (they register on import)
