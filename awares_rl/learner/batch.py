"""One collate for SFT and GRPO: token sequences (already in the rollout's exact token layout)
-> a right-padded training batch.

A ``TokenSequence`` is the whole conversation as the policy sees it (``awares_rl.core.tokens``:
P1 + A1 [+ S2 + A2], image pads expanded), its images in placeholder order, and one loss weight
per token: ``loss_weights[i]`` weighs the prediction of token i (0 = not trained: prompt, image,
crops turn). SFT sets the weights from the turns (w on the tool-call turn, 1 on the answer); GRPO
sets them from the episode's action mask and adds the logprobs and advantage it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from awares_rl.core.crops import LOW_RES_SCALE, cut_crops, low_res_view
from awares_rl.core.episode import Episode
from awares_rl.core.images import DEFAULT_MAX_PIXELS, load_image
from awares_rl.core.prompts import asked_question
from awares_rl.core.protocol import parse_tool_call
from awares_rl.core.tokens import (
    IMAGE_TOKEN,
    assistant_ids,
    crops_turn_ids,
    expand_image_tokens,
    first_turn_ids,
    image_token_counts,
)

if TYPE_CHECKING:
    from awares_rl.core.trajectory import Trajectory

# Keys of a collated batch that the model's forward takes.
MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
# Optional per-token float lists of a TokenSequence, collated to (B, T) aligned with input_ids.
PER_TOKEN_KEYS = ("old_logprobs", "ref_logprobs", "rollout_logprobs")


@dataclass
class TokenSequence:
    """One training sequence. All per-token lists align with ``token_ids`` (expanded ids)."""

    token_ids: list[int]
    images: list[Image.Image]
    loss_weights: list[float]  # weight of predicting token i; 0 = not trained
    old_logprobs: list[float] | None = None  # GRPO: the sampling policy, as the learner scores it
    ref_logprobs: list[float] | None = None  # GRPO: the frozen reference policy
    rollout_logprobs: list[float] | None = None  # the rollout engine's own logprobs
    advantage: float = 0.0  # GRPO: one advantage per sequence
    sample_id: str = ""

    def check(self) -> None:
        """Raise ValueError when the per-token lists do not align with ``token_ids``."""
        n = len(self.token_ids)
        lists = {"loss_weights": self.loss_weights}
        lists.update({k: getattr(self, k) for k in PER_TOKEN_KEYS if getattr(self, k) is not None})
        for name, values in lists.items():
            if len(values) != n:
                raise ValueError(f"sequence {self.sample_id!r}: {name} has {len(values)} entries for {n} tokens")
        if n < 2:
            raise ValueError(f"sequence {self.sample_id!r} has {n} tokens; need at least 2")

    @property
    def num_targets(self) -> int:
        return sum(w != 0 for w in self.loss_weights[1:])


def _image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of image pads in ``ids``, in order."""
    runs: list[int] = []
    for i, t in enumerate(ids):
        if t == image_token_id:
            if i and ids[i - 1] == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
    return runs


def _pad(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def collate_sequences(sequences: Sequence[TokenSequence], processor) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``sequences``.

    Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (1 on image pads), ``loss_weights``
    (float) — all (B, T) aligned with ``input_ids`` —, ``pixel_values`` (patches, C*14*14*2) and
    ``image_grid_thw`` (n_images, 3) for all images in order, ``advantages`` (B,), and each of
    ``old_logprobs`` / ``ref_logprobs`` / ``rollout_logprobs`` (B, T) when every sequence has it.
    Raises ValueError when a sequence's image pads do not match its images' visual tokens.
    """
    if not sequences:
        raise ValueError("collate_sequences needs at least one sequence")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for s in sequences:
        s.check()
        expected = image_token_counts(processor.image_processor, s.images)
        if _image_runs(s.token_ids, image_id) != expected:
            raise ValueError(
                f"sequence {s.sample_id!r}: image pad runs {_image_runs(s.token_ids, image_id)} do not "
                f"match the processor's visual tokens {expected} for its {len(s.images)} images"
            )
    width = max(len(s.token_ids) for s in sequences)
    ids = _pad([s.token_ids for s in sequences], width, tok.pad_token_id, torch.long)
    batch = {
        "input_ids": ids,
        "attention_mask": _pad([[1] * len(s.token_ids) for s in sequences], width, 0, torch.long),
        "mm_token_type_ids": (ids == image_id).long(),
        "loss_weights": _pad([s.loss_weights for s in sequences], width, 0.0, torch.float32),
        "advantages": torch.tensor([s.advantage for s in sequences], dtype=torch.float32),
    }
    for key in PER_TOKEN_KEYS:
        rows = [getattr(s, key) for s in sequences]
        if all(r is not None for r in rows):
            batch[key] = _pad(rows, width, 0.0, torch.float32)
    images = [im for s in sequences for im in s.images]
    if images:
        vision = processor.image_processor(images=images, return_tensors="pt")
        batch["pixel_values"], batch["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
    return batch


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a collated batch that the model's forward takes."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def trajectory_to_sequence(
    processor,
    traj: Mapping[str, Any] | Trajectory,
    tool_turn_weight: float = 5.0,
    image: Image.Image | None = None,
    root: str | Path | None = None,
    low_res_scale: float = LOW_RES_SCALE,
    system_prompt: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> TokenSequence:
    """An SFT trajectory (a ``Trajectory`` or its JSON: ``{"question", "turns", "crop_ids", "image",
    ...}``) in the rollout's token layout: P1 + A1, or P1 + A1 + S2 + A2 after a tool call.

    Weights: ``tool_turn_weight`` on every token of the tool-call turn A1 (its ``<|im_end|>``
    included), 1 on the answer turn, 0 on prompts and images. Images: the low-res view, then the
    crops cut from the original. The image is ``image`` or loaded from ``root / traj["image"]``.
    """
    if not isinstance(traj, Mapping):  # a data_pipeline.trajectories.Trajectory
        traj = traj.to_json()
    tok, turns = processor.tokenizer, list(traj["turns"])
    if image is None:
        if root is None:
            raise ValueError("trajectory_to_sequence needs image= or root= (the JSONL's folder)")
        image = load_image(Path(root) / traj["image"], max_image_pixels)
    crops = parse_tool_call(turns[0])
    if (crops is None) != (len(turns) == 1) or len(turns) > 2:
        raise ValueError(f"trajectory {traj.get('id')!r}: turns {turns!r} must be [answer] or [GET_CROPS call, answer]")
    if crops is not None and list(traj.get("crop_ids", crops)) != crops:
        raise ValueError(f"trajectory {traj.get('id')!r}: crop_ids {traj['crop_ids']} != tool call {crops}")
    images = [low_res_view(image, low_res_scale)] + (cut_crops(image, crops) if crops else [])
    counts = image_token_counts(processor.image_processor, images)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    question = asked_question(traj["question"], traj.get("benchmark"), traj.get("metric"))
    p1 = expand_image_tokens(first_turn_ids(tok, question, system_prompt), image_id, counts[:1])
    a1 = assistant_ids(tok, turns[0])
    ids, weights = p1 + a1, [0.0] * len(p1) + [tool_turn_weight if crops else 1.0] * len(a1)
    if crops:
        s2 = expand_image_tokens(crops_turn_ids(tok, crops), image_id, counts[1:])
        a2 = assistant_ids(tok, turns[1])
        ids, weights = ids + s2 + a2, weights + [0.0] * len(s2) + [1.0] * len(a2)
    return TokenSequence(ids, images, weights, sample_id=str(traj.get("id", "")))


def episode_to_sequence(ep: Episode, advantage: float = 0.0) -> TokenSequence:
    """A rollout episode as a GRPO sequence: weight 1 on the policy's tokens (its action mask),
    the engine's logprobs as ``rollout_logprobs``. Raises ValueError for an episode with no tokens."""
    if ep.error is not None or not ep.token_ids:
        raise ValueError(f"episode {ep.sample_id}#{ep.group_index} has no tokens ({ep.error or 'empty'})")
    ep.check()
    return TokenSequence(
        token_ids=list(ep.token_ids), images=list(ep.images),
        loss_weights=[float(m) for m in ep.action_mask], rollout_logprobs=list(ep.logprobs),
        advantage=advantage, sample_id=f"{ep.sample_id}#{ep.group_index}",
    )
