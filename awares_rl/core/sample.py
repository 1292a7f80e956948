"""``Sample``: one question about one image, and its JSONL form (ARCHITECTURE.md, "Records").

One JSON object a line::

    {"id": str, "image": str (path relative to the JSONL file), "question": str,
     "answers": [str, ...], "evidence_boxes": [[x1, y1, x2, y2], ...] (pixels, optional),
     "metric": "anls" | "relaxed" | "vqa" | "exact" | "ocrbench" | "semantic" (optional),
     "needs_high_res": bool (optional), "meta": {...} (optional, free-form)}

Reading is strict: each problem raises ``SampleError`` naming ``file:line`` and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("anls", "relaxed", "vqa", "exact", "ocrbench", "semantic")
_REQUIRED = ("id", "image", "question", "answers")
_KNOWN = (*_REQUIRED, "evidence_boxes", "metric", "needs_high_res", "meta")


class SampleError(ValueError):
    """A malformed sample; ``where`` is ``file:line`` (or a record label), ``field`` the key."""

    def __init__(self, where: str, field_name: str, problem: str) -> None:
        self.where, self.field = where, field_name
        super().__init__(f"{where}: field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Sample:
    """A VQA sample. ``image`` is relative to the JSONL file that lists it."""

    id: str
    image: str
    question: str
    answers: tuple[str, ...]
    evidence_boxes: tuple[tuple[float, float, float, float], ...] = ()
    metric: str | None = None
    needs_high_res: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, obj: Any, where: str = "<sample>") -> Sample:
        """Validate a decoded JSON object; raise ``SampleError`` naming ``where`` and the field."""
        if not isinstance(obj, dict):
            raise SampleError(where, "<line>", f"expected a JSON object, got {type(obj).__name__}")
        for key in _REQUIRED:
            if key not in obj:
                raise SampleError(where, key, "is missing")
        unknown = sorted(set(obj) - set(_KNOWN))
        if unknown:
            raise SampleError(where, unknown[0], f"unknown field (known: {', '.join(_KNOWN)})")
        return cls(
            id=_text(obj["id"], where, "id"),
            image=_text(obj["image"], where, "image"),
            question=_text(obj["question"], where, "question"),
            answers=_answers(obj["answers"], where),
            evidence_boxes=_boxes(obj.get("evidence_boxes") or [], where),
            metric=_metric(obj.get("metric"), where),
            needs_high_res=_optional_bool(obj.get("needs_high_res"), where, "needs_high_res"),
            meta=_meta(obj.get("meta"), where),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one JSONL line (optional fields omitted when unset)."""
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "question": self.question,
            "answers": list(self.answers),
        }
        if self.evidence_boxes:
            out["evidence_boxes"] = [[_num(v) for v in b] for b in self.evidence_boxes]
        if self.metric is not None:
            out["metric"] = self.metric
        if self.needs_high_res is not None:
            out["needs_high_res"] = self.needs_high_res
        if self.meta:
            out["meta"] = self.meta
        return out

    def to_line(self) -> str:
        """One JSONL line (no trailing newline), keys in a stable order."""
        return json.dumps(self.to_json(), ensure_ascii=False)

    def image_path(self, jsonl_path: str | Path) -> Path:
        """Absolute path of the image, resolved against the JSONL file's folder."""
        return (Path(jsonl_path).parent / self.image).resolve()


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SampleError(where, name, f"must be a non-empty string, got {value!r}")
    return value


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SampleError(where, "answers", f"must be a non-empty list of strings, got {value!r}")
    for i, a in enumerate(value):
        if not isinstance(a, str):
            raise SampleError(where, f"answers[{i}]", f"must be a string, got {a!r}")
    return tuple(value)


def _boxes(value: Any, where: str) -> tuple[tuple[float, float, float, float], ...]:
    if not isinstance(value, list):
        raise SampleError(where, "evidence_boxes", f"must be a list of boxes, got {value!r}")
    boxes = []
    for i, box in enumerate(value):
        ok = isinstance(box, list) and len(box) == 4
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        if not ok or box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
            raise SampleError(
                where, f"evidence_boxes[{i}]", f"must be [x1, y1, x2, y2] of finite numbers with "
                f"x2 > x1 >= 0 and y2 > y1 >= 0 (pixels), got {box!r}"
            )
        boxes.append((box[0], box[1], box[2], box[3]))
    return tuple(boxes)


def _metric(value: Any, where: str) -> str | None:
    if value is not None and value not in METRICS:
        raise SampleError(where, "metric", f"must be one of {', '.join(METRICS)}, got {value!r}")
    return value


def _optional_bool(value: Any, where: str, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise SampleError(where, name, f"must be true, false or absent, got {value!r}")
    return value


def _meta(value: Any, where: str) -> dict[str, Any]:
    if value is not None and not isinstance(value, dict):
        raise SampleError(where, "meta", f"must be a JSON object, got {value!r}")
    return dict(value or {})


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, str | SampleError]]:
    """(line number, text) of each non-blank line of a JSONL file, 1-based; a line that is not
    UTF-8 comes as a SampleError naming ``file:line`` and the byte, so a reader can skip it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, SampleError(f"{path}:{lineno}", "<line>", (
                    f"byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8; "
                    "re-save the file as UTF-8"))
                continue
            if line.strip():
                yield lineno, line


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a JSONL file, 1-based; raises SampleError
    (``file:line``) at a line that is not UTF-8."""
    for lineno, line in iter_jsonl_lines(path):
        if isinstance(line, SampleError):
            raise line
        yield lineno, line


def parse_line(line: str, where: str) -> Sample:
    """Decode and validate one JSONL line; JSON errors become ``SampleError`` too."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise SampleError(where, "<line>", f"invalid JSON ({e.msg} at column {e.colno})") from e
    return Sample.from_json(obj, where)


def write_jsonl(samples: list[Sample], path: str | Path) -> Path:
    """Write samples to ``path`` atomically (a temp file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(s.to_line() + "\n" for s in samples), encoding="utf-8")
    tmp.replace(path)
    return path
