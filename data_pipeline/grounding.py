"""Evidence boxes for crop-needed samples: from the dataset, or from a grounding VLM.

The paper asks an "oracle grounding model" for the evidence box of each sample that needs a crop
(the model is not published). ``Grounder`` is that role; ``DatasetBoxes`` reads the boxes a
dataset ships (the synthetic benchmark, V*), ``VLMGrounder`` prompts a VLM through the rollout
``Engine`` for ``[x1, y1, x2, y2]`` and parses its reply with ``parse_boxes``.

Coordinate frames a VLM may answer in (``coords``):
  - ``"resized"``: pixels of the image as the processor resized it (Qwen2.5-VL's native grounding);
  - ``"pixels"``: pixels of the original image;
  - ``"norm1000"``: 0..1000 on both axes (Qwen2-VL).
Boxes returned are always pixels of the ORIGINAL image, clipped to it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from awares_rl.core.trajectory import Box

if TYPE_CHECKING:
    from awares_rl.core.sample import Sample

log = logging.getLogger(__name__)

COORDS = ("resized", "pixels", "norm1000")
DEFAULT_GROUNDING_PROMPT = (
    "Question: {question}\nAnswer: {answer}\nGive the bounding box of the image region that shows "
    "the answer, as [x1, y1, x2, y2]."
)

_NUM = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
# [x1, y1, x2, y2] or (x1, y1, x2, y2), also inside {"bbox_2d": [...]} JSON (Qwen2.5-VL)
_FLAT = re.compile(r"[\[\(]\s*" + _SEP.join([_NUM] * 4) + r"\s*[\]\)]")
# (x1,y1),(x2,y2): Qwen2-VL's <|box_start|>(x1,y1),(x2,y2)<|box_end|>
_PAIRS = re.compile(r"\(\s*" + _NUM + _SEP + _NUM + r"\s*\)" + _SEP + r"\(\s*" + _NUM + _SEP + _NUM + r"\s*\)")


class Grounder(Protocol):
    """Predicts evidence boxes (original-image pixels) for one (image, question, answer).

    ``sample`` carries the dataset record for grounders that read it (``DatasetBoxes``); an empty
    list means "no box found" (the sample is then skipped, never given a made-up crop)."""

    name: str

    def ground(
        self, image: Image.Image, question: str, answer: str, sample: Sample | None = None
    ) -> list[Box]: ...


def _to_pixels(box: Sequence[float], width: int, height: int, coords: str,
               resized: tuple[int, int] | None) -> Box:
    x1, y1, x2, y2 = box
    if coords == "norm1000":
        sx, sy = width / 1000, height / 1000
    elif coords == "resized":
        if resized is None:
            raise ValueError("coords='resized' needs the resized (width, height) of the image")
        sx, sy = width / resized[0], height / resized[1]
    else:
        sx = sy = 1.0
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy


def _clean(box: Box, width: int, height: int) -> Box | None:
    """Order the corners, clip to the image; None when nothing of it is left."""
    x1, x2 = sorted((box[0], box[2]))
    y1, y2 = sorted((box[1], box[3]))
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def parse_boxes(text: str, width: int, height: int, coords: str = "pixels",
                resized: tuple[int, int] | None = None) -> list[Box] | None:
    """Every box in a VLM reply, as original-image pixels; ``None`` when there is none usable.

    Accepts ``[x1, y1, x2, y2]``, ``(x1, y1, x2, y2)``, ``{"bbox_2d": [...]}`` JSON (also in a
    code fence, several boxes) and ``(x1,y1),(x2,y2)``. Swapped corners are reordered, boxes are
    clipped to the image, and boxes that are empty after clipping are dropped.
    """
    if coords not in COORDS:
        raise ValueError(f"unknown box coordinates {coords!r}: use one of {COORDS}")
    found = [tuple(map(float, m)) for m in _FLAT.findall(text)]
    found += [tuple(map(float, m)) for m in _PAIRS.findall(text)]
    boxes = []
    for raw in found:
        box = _clean(_to_pixels(raw, width, height, coords, resized), width, height)
        if box is not None and box not in boxes:
            boxes.append(box)
    return boxes or None


class DatasetBoxes:
    """The sample's own ``evidence_boxes`` (pixels); [] when the dataset has none."""

    name = "dataset"

    def ground(self, image: Image.Image, question: str, answer: str,
               sample: Sample | None = None) -> list[Box]:
        if sample is None:
            raise ValueError("DatasetBoxes.ground needs sample= (it reads sample.evidence_boxes)")
        return [tuple(map(float, b)) for b in sample.evidence_boxes]


class VLMGrounder:
    """Asks a VLM (any rollout ``Engine``) for the evidence box, greedily, on the full image.

    ``image_processor`` (a Qwen2-VL image processor) is needed for ``coords="resized"``: the box is
    in the frame of the image as that processor resizes it (``smart_resize``).
    """

    name = "vlm"

    def __init__(self, engine, tokenizer, coords: str = "resized", image_processor=None,
                 prompt: str = DEFAULT_GROUNDING_PROMPT, max_new_tokens: int = 64) -> None:
        if coords not in COORDS:
            raise ValueError(f"unknown box coordinates {coords!r}: use one of {COORDS}")
        if coords == "resized" and image_processor is None:
            raise ValueError("VLMGrounder(coords='resized') needs the model's image_processor")
        self.engine, self.tokenizer, self.coords = engine, tokenizer, coords
        self.image_processor, self.prompt, self.max_new_tokens = image_processor, prompt, max_new_tokens
        self.unparsed: list[str] = []  # replies with no usable box (for the log and the report)

    def _resized(self, image: Image.Image) -> tuple[int, int] | None:
        if self.coords != "resized":
            return None
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        ip = self.image_processor
        h, w = smart_resize(image.height, image.width, ip.patch_size * ip.merge_size,
                            ip.size["shortest_edge"], ip.size["longest_edge"])
        return w, h

    def ground_batch(self, images: Sequence[Image.Image], questions: Sequence[str],
                     answers: Sequence[str]) -> list[list[Box]]:
        """Boxes for each item, one batched engine call; [] where the reply held no box."""
        from awares_rl.core.engine import GenRequest, SamplingConfig

        requests = [
            GenRequest(vqa_prompt_ids(self.tokenizer, self.prompt.format(question=q, answer=a)), [im])
            for im, q, a in zip(images, questions, answers, strict=True)
        ]
        outs = self.engine.generate(requests, SamplingConfig(0.0, 1.0, self.max_new_tokens))
        result = []
        for im, out in zip(images, outs):
            text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
            boxes = parse_boxes(text, im.width, im.height, self.coords, self._resized(im))
            if boxes is None:
                self.unparsed.append(text)
                log.warning("grounder reply holds no usable [x1, y1, x2, y2] box: %r", text[:200])
            result.append(boxes or [])
        return result

    def ground(self, image: Image.Image, question: str, answer: str,
               sample: Sample | None = None) -> list[Box]:
        return self.ground_batch([image], [question], [answer])[0]


def ground_many(grounder: Grounder, images: Sequence[Image.Image], questions: Sequence[str],
                answers: Sequence[str], samples: Sequence[Sample]) -> list[list[Box]]:
    """Boxes for several items: one batched call when the grounder has ``ground_batch``."""
    if hasattr(grounder, "ground_batch"):
        return grounder.ground_batch(images, questions, answers)
    return [grounder.ground(im, q, a, s) for im, q, a, s in zip(images, questions, answers, samples)]


def vqa_prompt_ids(tokenizer, text: str, system_prompt: str | None = None) -> list[int]:
    """Compact prompt ids of a plain VQA turn: [system], user(image, text), assistant header.

    This is the format the base model was pretrained with (``awares_rl.pretrain`` renders
    ``conversation.user_turn`` with the chat template, no system message); a real model's template
    adds its own default system prompt, exactly as in its instruction tuning.
    """
    from awares_rl.learner.conversation import user_turn

    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append(user_turn(text))
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
