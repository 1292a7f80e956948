"""Answer judges: ``fn(predictions, references, **kw) -> list[float]``, one score per prediction.

``predictions[i]`` is the model's final answer; ``references[i]`` the list of accepted answers
(at least one). The benchmark metrics follow lmms-eval's definitions;
``embedding_cosine`` is the paper's R_ans and ``llm_judge`` asks an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein

from reward.embedding import embedding_cosine
from reward.llm_judge import llm_judge
from reward.validate import check_batch
from reward.vqa_norm import normalize_vqa_answer

Judge = Callable[..., list[float]]

ANLS_THRESHOLD = 0.5
RELAXED_TOLERANCE = 0.05


_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, spaces collapsed (" Vertical. " -> "vertical")."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(
    predictions: Sequence[str], references: Sequence[Sequence[str]], **_: object
) -> list[float]:
    """1.0 if the normalised prediction (``normalize_answer``) equals a normalised reference, else
    0.0: "Red." matches "red". The one exact match of the project (reward, labels, eval, probes)."""
    check_batch(predictions, references)
    return [
        float(normalize_answer(p) in {normalize_answer(r) for r in refs})
        for p, refs in zip(predictions, references, strict=True)
    ]


def _anls_one(pred: str, refs: Sequence[str], threshold: float) -> float:
    det = " ".join(pred.strip().lower().split())
    ratios = []
    for ref in refs:
        gt = " ".join(ref.strip().lower().split())
        # lmms-eval divides by the RAW lengths (before whitespace collapsing), upper-cased.
        length = max(len(ref.upper()), len(pred.upper()))
        ratios.append(0.0 if length == 0 else Levenshtein.distance(gt, det) / length)
    score = 1.0 - min(ratios)
    return score if score >= threshold else 0.0


def anls(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    threshold: float = ANLS_THRESHOLD,
    **_: object,
) -> list[float]:
    """ANLS = 1 - min_gt Lev(norm(gt), norm(pred)) / max(|gt|, |pred|), set to 0 below ``threshold``.

    ``norm`` lowercases and collapses whitespace (DocVQA / InfoVQA, lmms-eval ``anls``).
    """
    check_batch(predictions, references)
    return [_anls_one(p, refs, threshold) for p, refs in zip(predictions, references, strict=True)]


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def _relaxed_one(pred: str, target: str, tolerance: float) -> bool:
    p, t = _to_float(pred), _to_float(target)
    if p is not None and t:  # t == 0 (or None) falls back to string equality, as in lmms-eval
        return abs(p - t) / abs(t) <= tolerance  # NaN compares False
    return pred.lower() == target.lower()


def relaxed_accuracy(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tolerance: float = RELAXED_TOLERANCE,
    **_: object,
) -> list[float]:
    """ChartQA relaxed accuracy: 1 if some target t has |p - t| / |t| <= ``tolerance``.

    Numbers parse with ``float``; a trailing ``%`` divides by 100 ("5%" == 0.05). Non-numeric
    answers (or t == 0) need a case-insensitive exact match. Max over the references.
    """
    check_batch(predictions, references)
    return [
        float(any(_relaxed_one(p, t, tolerance) for t in refs))
        for p, refs in zip(predictions, references, strict=True)
    ]


def _vqa_one(pred: str, refs: Sequence[str]) -> float:
    answer = normalize_vqa_answer(pred)
    gts = [normalize_vqa_answer(r) for r in refs]
    if len(gts) == 1:  # leave-one-out is undefined for one annotator: plain normalised match
        return float(gts[0] == answer)
    per_gt = []
    for i in range(len(gts)):
        matches = sum(1 for j, gt in enumerate(gts) if j != i and gt == answer)
        per_gt.append(min(1.0, matches / 3.0))
    return statistics.fmean(per_gt)


def vqa_accuracy(
    predictions: Sequence[str], references: Sequence[Sequence[str]], **_: object
) -> list[float]:
    """TextVQA accuracy: mean over the gts i of min(1, #{j != i : gt_j == pred} / 3).

    Answers and gts pass through the EvalAI normaliser (``reward.vqa_norm``). With the usual 10
    gts, 3 or more matching annotators give 1.0, two give 0.6, one gives 0.3. With a single gt the
    score is the normalised exact match (documented choice: the formula would always give 0).
    """
    check_batch(predictions, references)
    return [_vqa_one(p, refs) for p, refs in zip(predictions, references, strict=True)]


# Fullwidth ASCII (U+FF01..U+FF5E) and the ideographic space fold to ASCII, as lmms-eval does.
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def _ocr_fold(text: str) -> str:
    return text.translate(_FULLWIDTH).lower().strip().replace("\n", " ")


def ocrbench(
    predictions: Sequence[str], references: Sequence[Sequence[str]], **_: object
) -> list[float]:
    """OCRBench: 1 if some gt (folded: fullwidth -> ASCII, lowercase, strip) occurs in the folded
    prediction, else 0."""
    check_batch(predictions, references)
    scores = []
    for pred, refs in zip(predictions, references, strict=True):
        folded = _ocr_fold(pred)
        scores.append(float(any(_ocr_fold(r) in folded for r in refs)))
    return scores


JUDGES: dict[str, Judge] = {
    "exact_match": exact_match,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
    "vqa_accuracy": vqa_accuracy,
    "ocrbench": ocrbench,
    "embedding_cosine": embedding_cosine,
    "llm_judge": llm_judge,
}

# Benchmark metric names used in sample files (ARCHITECTURE.md) -> the judge that scores them.
BENCHMARK_JUDGES: dict[str, str] = {
    "exact": "exact_match",
    "anls": "anls",
    "relaxed": "relaxed_accuracy",
    "vqa": "vqa_accuracy",
    "ocrbench": "ocrbench",
    "semantic": "embedding_cosine",
}


CORRECT_THRESHOLD = 0.5  # the default of reward.correct_threshold


def is_correct(score: float, threshold: float = CORRECT_THRESHOLD) -> bool:
    """A judge score counts as a right answer at ``threshold`` (``reward.correct_threshold``): the
    one rule behind trajectory labels, GRPO's logged accuracy and eval."""
    return score >= threshold


def route_judge(metric: str | None, default: str, overrides: Mapping[str, str] | None = None,
                by_benchmark: bool = True) -> str:
    """The judge of a sample whose metric is ``metric``: the one routing rule of the project.

    ``overrides[metric]`` when set; else, with ``by_benchmark``, the benchmark's own judge
    (``BENCHMARK_JUDGES``: what trajectory labels and eval call right); else ``default``. A sample
    without a metric always gets ``default`` (``reward.judge``), in every stage. GRPO's R_ans routes
    with ``by_benchmark=False``: the paper's reward is one judge for every sample unless mapped."""
    if metric is None:
        return default
    return (overrides or {}).get(metric) or (BENCHMARK_JUDGES.get(metric) if by_benchmark else None) or default


def get_judge(name: str) -> Judge:
    """The judge registered as ``name``; raises KeyError listing the known names."""
    try:
        return JUDGES[name]
    except KeyError:
        raise KeyError(f"unknown judge {name!r}: choose one of {sorted(JUDGES)}") from None
