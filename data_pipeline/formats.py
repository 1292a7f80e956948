"""Field mappings of the public benchmarks onto ``Sample`` (one function per benchmark).

Each ``to_*`` takes one raw record (a dict: a row of an HF dataset / parquet file, or an entry of
the benchmark's own JSON) and returns ``RawSample``: the Sample fields plus the image source (a
path, bytes, or an HF ``{"bytes", "path"}`` dict). Missing or malformed fields raise
``RecordError`` naming the field; the caller adds the file and line.

Native layouts understood (images resolved relative to the annotation file):
  - DocVQA:  ``{"data": [{"questionId", "question", "answers", "image": "documents/x.png"}]}``
  - InfoVQA: ``{"data": [{"questionId", "question", "answers", "image_local_name": "x.jpeg"}]}``
  - ChartQA: ``[{"imgname": "x.png", "query", "label"}]`` with images in ``png/``
  - TextVQA: ``{"data": [{"question_id", "question", "image_id", "answers": [10 x str]}]}``
    with images ``train_images/<image_id>.jpg``
  - V*:      ``test_questions.jsonl`` lines ``{"image", "text", "label", "question_id",
    "category"}``; a per-image ``<stem>.json`` with ``"bbox": [[x, y, w, h], ...]`` adds boxes.
  - OCRBench: ``OCRBench.json`` ``[{"dataset_name", "image_path", "question", "answers", "type"}]``
    with images in ``OCRBench_Images/``.
  - POPE:    ``coco_pope_*.json`` lines ``{"question_id", "image", "text", "label": "yes"|"no"}``
    with the COCO images in ``val2014/``.
HF / parquet columns (lmms-lab layouts): the same names, with ``image`` an Image column;
ChartQA uses ``question`` / ``answer``; OCRBench (``echo840/OCRBench``) ``dataset``, ``question``,
``question_type``, ``answer`` (a list); POPE (``lmms-lab/POPE``) ``question_id``, ``question``,
``answer``, ``category``, ``image_source``; RealWorldQA (``xai-org/RealworldQA``) ``question``,
``answer`` (an option letter or a short answer; no id: the record's index).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

METRIC = {"docvqa": "anls", "infovqa": "anls", "chartqa": "relaxed", "textvqa": "vqa", "vstar": "exact",
          "ocrbench": "ocrbench", "pope": "exact", "realworldqa": "exact"}
# Folders (relative to the annotation file) searched for an image named by a native record.
IMAGE_DIRS = {
    "docvqa": ("", "documents", "images"),
    "infovqa": ("", "infographicsvqa_images", "images"),
    "chartqa": ("", "png", "images"),
    "textvqa": ("", "train_images", "test_images", "images"),
    "vstar": ("", "images"),
    "ocrbench": ("", "OCRBench_Images", "images"),
    "pope": ("", "val2014", "images"),
    "realworldqa": ("", "images"),
}


class RecordError(ValueError):
    """A record that cannot become a Sample; ``field`` names the offending key."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"field {field_name!r}: {problem}")


@dataclass
class RawSample:
    """A converted record before its image is written: ``image`` is a source, not yet a path."""

    id: str
    question: str
    answers: list[str]
    image: Any  # str path (relative to the annotation file), bytes, PIL image or {"bytes","path"}
    evidence_boxes: list[list[float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def pick(record: dict, *names: str, required: bool = True) -> Any:
    """The first of ``names`` present (and not None) in ``record``."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    if required:
        raise RecordError(names[0], f"is missing (looked for {', '.join(names)})")
    return None


def text_field(record: dict, *names: str) -> str:
    value = pick(record, *names)
    if not isinstance(value, (str, int)) or not str(value).strip():
        raise RecordError(names[0], f"must be a non-empty string, got {value!r}")
    return str(value)


def answers_field(record: dict, *names: str) -> list[str]:
    value = pick(record, *names)
    values = value if isinstance(value, (list, tuple)) else [value]
    answers = [str(v) for v in values if v is not None and str(v).strip()]
    if not answers:
        raise RecordError(names[0], f"has no usable answer: {value!r}")
    return answers


def _qid(record: dict, fmt: str, index: int, *names: str) -> str:
    value = pick(record, *names, required=False)
    return f"{fmt}-{value if value is not None else index}"


def _docvqa_like(fmt: str, record: dict, index: int) -> RawSample:
    """DocVQA and InfoVQA share one record layout (questionId, question, answers, image)."""
    return RawSample(
        id=_qid(record, fmt, index, "questionId", "question_id"),
        question=text_field(record, "question"),
        answers=answers_field(record, "answers", "answer"),
        image=pick(record, "image", "image_local_name", "image_path"),
    )


def to_docvqa(record: dict, index: int) -> RawSample:
    return _docvqa_like("docvqa", record, index)


def to_infovqa(record: dict, index: int) -> RawSample:
    return _docvqa_like("infovqa", record, index)


def to_chartqa(record: dict, index: int) -> RawSample:
    return RawSample(
        id=_qid(record, "chartqa", index, "question_id", "id"),
        question=text_field(record, "query", "question"),
        answers=answers_field(record, "label", "answer", "answers"),
        image=pick(record, "image", "imgname"),
        meta={"type": record["type"]} if isinstance(record.get("type"), str) else {},
    )


def to_textvqa(record: dict, index: int) -> RawSample:
    image = pick(record, "image", "image_path", required=False)
    if image is None:
        image_id = text_field(record, "image_id")
        image = image_id if "." in image_id else f"{image_id}.jpg"
    return RawSample(
        id=_qid(record, "textvqa", index, "question_id"),
        question=text_field(record, "question"),
        answers=answers_field(record, "answers"),
        image=image,
    )


_OPTION = re.compile(r"\(([A-D])\)\s*([^()\n]+?)(?=\s*\([A-D]\)|\n|$)")


def to_vstar(record: dict, index: int) -> RawSample:
    """V*: the gold answer is the option letter; its option text is accepted too."""
    text = text_field(record, "text", "question")
    label = text_field(record, "label", "answer").strip().strip("()").upper()
    if label not in "ABCD" or len(label) != 1:
        raise RecordError("label", f"must be one of A, B, C, D, got {label!r}")
    options = dict(_OPTION.findall(text))
    answers = [label] + ([options[label].strip()] if label in options else [])
    boxes = [[x, y, x + w, y + h] for x, y, w, h in record.get("bbox") or []]
    category = record.get("category")
    return RawSample(
        id=_qid(record, "vstar", index, "question_id"),
        question=text,
        answers=answers,
        image=pick(record, "image", "image_path"),
        evidence_boxes=boxes,
        meta={"category": category} if isinstance(category, str) else {},
    )


def _str_meta(record: dict, **names: tuple[str, ...]) -> dict[str, str]:
    """``{key: the first of its names that holds a string}`` for each key that has one."""
    out = {}
    for key, options in names.items():
        value = next((record[n] for n in options if isinstance(record.get(n), str)), None)
        if value is not None:
            out[key] = value
    return out


def to_ocrbench(record: dict, index: int) -> RawSample:
    """OCRBench: a list of accepted answers, judged by containment (the ``ocrbench`` metric)."""
    return RawSample(
        id=_qid(record, "ocrbench", index, "id", "question_id"),
        question=text_field(record, "question"),
        answers=answers_field(record, "answer", "answers"),
        image=pick(record, "image", "image_path"),
        meta=_str_meta(record, dataset=("dataset", "dataset_name"), question_type=("question_type", "type")),
    )


def to_pope(record: dict, index: int) -> RawSample:
    """POPE: "Is there a <object> in the image?", answered yes or no (exact match)."""
    answer = text_field(record, "answer", "label").strip().lower()
    if answer not in ("yes", "no"):
        raise RecordError("answer", f"must be yes or no (POPE), got {answer!r}")
    return RawSample(
        id=_qid(record, "pope", index, "question_id", "id"),
        question=text_field(record, "question", "text"),
        answers=[answer],
        image=pick(record, "image", "image_path"),
        meta=_str_meta(record, category=("category",), image_source=("image_source",)),
    )


_LETTER_OPTION = re.compile(r"^([A-Z])\.\s+(.+?)\s*$", re.MULTILINE)


def to_realworldqa(record: dict, index: int) -> RawSample:
    """RealWorldQA: an option letter ("A. left" lines in the question) or a short answer; a
    letter's option text is accepted too, as lmms-eval's multiple-choice filter maps it back."""
    question = text_field(record, "question")
    answer = text_field(record, "answer").strip()
    options = dict(_LETTER_OPTION.findall(question))
    extra = [options[answer]] if answer in options and options[answer] != answer else []
    return RawSample(
        id=_qid(record, "realworldqa", index, "id", "question_id"),
        question=question,
        answers=[answer, *extra],
        image=pick(record, "image", "image_path"),
    )


CONVERTERS: dict[str, Callable[[dict, int], RawSample]] = {
    "docvqa": to_docvqa,
    "infovqa": to_infovqa,
    "chartqa": to_chartqa,
    "textvqa": to_textvqa,
    "vstar": to_vstar,
    "ocrbench": to_ocrbench,
    "pope": to_pope,
    "realworldqa": to_realworldqa,
}
