"""One collate for SFT and GRPO: token sequences (already in the rollout's exact token layout)
-> a right-padded training batch.

A ``TokenSequence`` is the whole conversation as the policy sees it (``awares_rl.core.tokens``:
P1 + A1 [+ S2 + A2], image pads expanded), its images in placeholder order, and one loss weight
per token: ``loss_weights[i]`` weighs the prediction of token i (0 = not trained: prompt, image,
crops turn). SFT sets the weights from the turns (w on the tool-call turn, 1 on the answer); GRPO
sets them from the episode's action mask and adds the logprobs and advantage it needs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
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


def image_spans(ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """[start, end) of each run of image pads in ``ids``, in order."""
    spans: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t == image_token_id:
            if i and ids[i - 1] == image_token_id:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
    return spans


def _image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of image pads in ``ids``, in order."""
    return [end - start for start, end in image_spans(ids, image_token_id)]


def _pad(rows: Sequence[Sequence[float]], width: int, value: float, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def image_key(image: Image.Image) -> bytes:
    """A content key of ``image`` (mode, size, pixels): equal images share their processing and
    their vision-tower pass."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.digest()


class PixelCache:
    """Processed pixel values per image key, so that a step's passes over the same episodes
    (reference, old logprobs, each optimizer step) process every distinct image once.
    Least recently used entries go beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, key: bytes) -> tuple[torch.Tensor, torch.Tensor] | None:
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: bytes, pixels: torch.Tensor, grid: torch.Tensor) -> None:
        self.entries[key] = (pixels, grid)
        self.bytes += pixels.nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            old, _ = self.entries.popitem(last=False)[1]
            self.bytes -= old.nbytes


def _distinct_images(images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[bytes], list[int]]:
    """(distinct images, their keys, index of each image among them); same object = same key."""
    keys_by_id: dict[int, bytes] = {}
    position: dict[bytes, int] = {}
    distinct, keys, index = [], [], []
    for im in images:
        key = keys_by_id.setdefault(id(im), image_key(im))
        if key not in position:
            position[key] = len(distinct)
            distinct.append(im)
            keys.append(key)
        index.append(position[key])
    return distinct, keys, index


def _process(processor, images: Sequence[Image.Image], keys: Sequence[bytes], cache: PixelCache | None
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(pixel values, grid_thw row) of each image, through ``cache``: one processor call for the misses."""
    found = [cache.get(k) if cache is not None else None for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        vision = processor.image_processor(images=[images[i] for i in missing], return_tensors="pt")
        grids = vision["image_grid_thw"]
        for i, pixels, grid in zip(missing, vision["pixel_values"].split(grids.prod(-1).tolist()), grids):
            found[i] = (pixels, grid)
            if cache is not None:
                cache.put(keys[i], pixels, grid)
    return found  # type: ignore[return-value]


def _check_image_runs(sequences: Sequence[TokenSequence], counts: Sequence[int], image_id: int) -> None:
    """ValueError naming the sequence whose image pad runs differ from its images' visual tokens."""
    start = 0
    for s in sequences:
        expected = list(counts[start:start + len(s.images)])
        start += len(s.images)
        if _image_runs(s.token_ids, image_id) != expected:
            raise ValueError(
                f"sequence {s.sample_id!r}: image pad runs {_image_runs(s.token_ids, image_id)} do not "
                f"match the processor's visual tokens {expected} for its {len(s.images)} images"
            )


def collate_sequences(sequences: Sequence[TokenSequence], processor, dedupe_images: bool = False,
                      cache: PixelCache | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``sequences``.

    Returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (1 on image pads), ``loss_weights``
    (float) — all (B, T) aligned with ``input_ids`` —, ``pixel_values`` (patches, C*14*14*2) and
    ``image_grid_thw`` (n_images, 3) for all images in order, ``advantages`` (B,), and each of
    ``old_logprobs`` / ``ref_logprobs`` / ``rollout_logprobs`` (B, T) when every sequence has it.

    ``dedupe_images``: ``pixel_values`` hold each DISTINCT image once (equal content, e.g. a
    group's shared low-res view or a repeated crop), ``distinct_grid_thw`` their grids and
    ``image_index`` (n_images,) which distinct image each image is; ``image_grid_thw`` still lists
    every image (the rope positions need it). Such a batch goes to the model through
    ``awares_rl.learner.forward.model_forward`` (one vision-tower pass per distinct image).
    ``cache`` keeps processed pixel values across calls. Raises ValueError when a sequence's image
    pads do not match its images' visual tokens.
    """
    if not sequences:
        raise ValueError("collate_sequences needs at least one sequence")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for s in sequences:
        s.check()
    images = [im for s in sequences for im in s.images]
    distinct, keys, index = _distinct_images(images)
    processed = _process(processor, distinct, keys, cache)
    grids = [processed[i][1] for i in index]
    merge = processor.image_processor.merge_size ** 2
    _check_image_runs(sequences, [int(g.prod()) // merge for g in grids], image_id)
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
    if images:
        batch["image_grid_thw"] = torch.stack(grids)
        if dedupe_images:
            batch["pixel_values"] = torch.cat([p for p, _ in processed])
            batch["distinct_grid_thw"] = torch.stack([g for _, g in processed])
            batch["image_index"] = torch.tensor(index, dtype=torch.long)
        else:
            batch["pixel_values"] = torch.cat([processed[i][0] for i in index])
    return batch


def batch_order(sequences: Sequence[TokenSequence]) -> list[int]:
    """An order of ``sequences`` for micro-batching: those sharing a first image (a GRPO group's
    low-res view) side by side, so that a micro-batch runs the vision tower and the group's shared
    prompt once for them (``learner.prefix``); within a group direct answers before those with
    crops, by length (little padding)."""
    keys: dict[int, bytes] = {}

    def key(i: int) -> tuple:
        s = sequences[i]
        first = keys.setdefault(id(s.images[0]), image_key(s.images[0])) if s.images else b""
        return first, len(s.images), len(s.token_ids)

    return sorted(range(len(sequences)), key=key)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a collated batch that the model's forward takes (a ``dedupe_images`` batch:
    use ``awares_rl.learner.forward.model_forward``)."""
    if "image_index" in batch:
        raise ValueError("a dedupe_images batch holds each distinct image once: call "
                         "awares_rl.learner.forward.model_forward(model, batch), not model(**model_inputs(batch))")
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
