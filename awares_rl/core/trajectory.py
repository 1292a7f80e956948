"""The SFT trajectory record (``Trajectory``), its JSONL form and its validation.

One trajectory per sample: a direct answer ``["<answer>"]``, or ``["GET_CROPS: ['0']", "<answer>"]``
with the crops it names (``data_pipeline.trajectories`` builds them as the paper does; SFT and eval
read them). Fields, one JSON object a line::

    {"id", "image" (path relative to the file's folder), "question", "answers": [...], "metric",
     "split", "needs_crop": bool, "crop_ids": [int, ...], "turns": [str, ...], "low_res_answer",
     "full_res_answer", "low_res_score", "full_res_score", "needs_high_res" (or null),
     "evidence_boxes": [[x1, y1, x2, y2], ...], "box_source": "dataset" | "vlm" | null,
     "benchmark": the sample's ``meta.source`` or null (it picks the answer prompt: core.prompts),
     "low_res_truncated", "full_res_truncated": bool (that answer hit trajectories.max_new_tokens)}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from awares_rl.core.prompts import asked_question
from awares_rl.core.protocol import ToolCallError, format_tool_call, parse_tool_call
from awares_rl.core.sample import Sample, iter_jsonl

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2), pixels of the original image


class TrajectoryError(ValueError):
    """A malformed trajectory line; ``where`` is ``file:line``."""

    def __init__(self, where: str, field_name: str, problem: str) -> None:
        self.where, self.field = where, field_name
        super().__init__(f"{where}: field {field_name!r}: {problem}")


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 4 and all(_is_num(x) for x in v) and v[2] > v[0] and v[3] > v[1]


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (lambda v: _is_str(v) and bool(v), "a non-empty string"),
    "image": (lambda v: _is_str(v) and bool(v), "a non-empty string"),
    "question": (_is_str, "a string"),
    "answers": (lambda v: isinstance(v, list) and bool(v) and all(map(_is_str, v)), "a non-empty list of strings"),
    "metric": (lambda v: v is None or _is_str(v), "a string or null"),
    "split": (lambda v: v is None or _is_str(v), "a string or null"),
    "needs_crop": (lambda v: isinstance(v, bool), "true or false"),
    "crop_ids": (lambda v: isinstance(v, list) and all(type(c) is int and 0 <= c <= 8 for c in v)
                 and len(set(v)) == len(v), "a list of unique ints in 0..8"),
    "turns": (lambda v: isinstance(v, list) and 1 <= len(v) <= 2 and all(map(_is_str, v)), "1 or 2 strings"),
    "low_res_answer": (_is_str, "a string"),
    "full_res_answer": (_is_str, "a string"),
    "low_res_score": (_is_num, "a finite number"),
    "full_res_score": (_is_num, "a finite number"),
    "needs_high_res": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "evidence_boxes": (lambda v: isinstance(v, list) and all(map(_is_box, v)), "a list of [x1, y1, x2, y2]"),
    "box_source": (lambda v: v is None or v in ("dataset", "vlm"), '"dataset", "vlm" or null'),
    "benchmark": (lambda v: v is None or (_is_str(v) and bool(v)), "a non-empty string or null"),
    "low_res_truncated": (lambda v: isinstance(v, bool), "true or false"),
    "full_res_truncated": (lambda v: isinstance(v, bool), "true or false"),
}
_DEFAULTS = {"evidence_boxes": [], "box_source": None, "benchmark": None, "low_res_truncated": False,
             "full_res_truncated": False}


@dataclass(frozen=True)
class Trajectory:
    """One SFT trajectory: a direct answer, or GET_CROPS -> crops -> answer (see module doc)."""

    id: str
    image: str  # relative to the folder of the JSONL file that lists it
    question: str
    answers: tuple[str, ...]
    metric: str | None
    split: str | None
    needs_crop: bool
    crop_ids: tuple[int, ...]
    turns: tuple[str, ...]
    low_res_answer: str
    full_res_answer: str
    low_res_score: float
    full_res_score: float
    needs_high_res: bool | None
    evidence_boxes: tuple[Box, ...] = ()
    box_source: str | None = None
    benchmark: str | None = None  # the sample's meta.source: which answer prompt it is asked with
    low_res_truncated: bool = False  # the low-res answer hit the token limit (judged as it stands)
    full_res_truncated: bool = False

    @property
    def asked_question(self) -> str:
        """The question as the policy is asked it (``core.prompts.asked_question``)."""
        return asked_question(self.question, self.benchmark, self.metric)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("answers", "crop_ids", "turns"):
            out[key] = list(out[key])
        out["evidence_boxes"] = [list(b) for b in self.evidence_boxes]
        return out

    def to_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)

    @classmethod
    def from_json(cls, obj: Any, where: str = "<trajectory>") -> Trajectory:
        """Validate a decoded line; ``TrajectoryError`` names ``where`` and the field."""
        if not isinstance(obj, dict):
            raise TrajectoryError(where, "<line>", f"expected a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_CHECKS))
        if unknown:
            raise TrajectoryError(where, unknown[0], f"unknown field (known: {', '.join(_CHECKS)})")
        obj = {**_DEFAULTS, **obj}
        for key, (ok, what) in _CHECKS.items():
            if key not in obj:
                raise TrajectoryError(where, key, "is missing")
            if not ok(obj[key]):
                raise TrajectoryError(where, key, f"must be {what}, got {obj[key]!r}")
        _check_turns(obj, where)
        return cls(**{**obj, "answers": tuple(obj["answers"]), "crop_ids": tuple(obj["crop_ids"]),
                      "turns": tuple(obj["turns"]),
                      "evidence_boxes": tuple(tuple(map(float, b)) for b in obj["evidence_boxes"]),
                      "low_res_score": float(obj["low_res_score"]),
                      "full_res_score": float(obj["full_res_score"])})


def _check_turns(obj: dict, where: str) -> None:
    """turns agree with needs_crop and crop_ids: [call naming crop_ids, answer] or [answer]."""
    turns, crops = obj["turns"], obj["crop_ids"]
    try:
        called = parse_tool_call(turns[0])
    except ToolCallError as e:
        raise TrajectoryError(where, "turns", f"turn 1 is a malformed tool call ({e.reason})") from e
    if obj["needs_crop"]:
        if not crops or len(turns) != 2 or called != crops:
            raise TrajectoryError(where, "turns", f"needs_crop is true: expected [{format_tool_call(crops or [0])!r}, "
                                  f"answer] naming crop_ids {crops} (non-empty), got {turns!r}")
    elif crops or len(turns) != 1 or called is not None:
        raise TrajectoryError(where, "turns", f"needs_crop is false: expected [answer] and crop_ids [], got {turns!r}")


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """Read and validate a trajectory JSONL file; errors name ``file:line``; ids must be unique."""
    path, out, seen = Path(path), [], set()
    for lineno, line in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            t = Trajectory.from_json(json.loads(line), where)
        except json.JSONDecodeError as e:
            raise TrajectoryError(where, "<line>", f"invalid JSON ({e.msg} at column {e.colno})") from e
        if t.id in seen:
            raise TrajectoryError(where, "id", f"duplicate id {t.id!r}")
        seen.add(t.id)
        out.append(t)
    return out


def label_needs_high_res(samples: Sequence[Sample], trajectories: Sequence[Trajectory]) -> tuple[list[Sample], int]:
    """Samples whose ``needs_high_res`` is unknown (None) take their trajectory's ``needs_crop``
    (the paper's label: wrong at low res, right at full res), so that GRPO charges alpha_miss on
    converted datasets too; a sample's own label is kept. Returns the samples, in order, and how
    many took a label."""
    labels = {t.id: t.needs_crop for t in trajectories}
    out, n = [], 0
    for s in samples:
        if s.needs_high_res is None and s.id in labels:
            s, n = replace(s, needs_high_res=labels[s.id]), n + 1
        out.append(s)
    return out, n
