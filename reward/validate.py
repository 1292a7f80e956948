"""Input checks shared by every judge."""

from __future__ import annotations

from collections.abc import Sequence


def check_batch(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise ValueError naming the bad input unless the batch is well-formed."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists (one entry a sample), not str")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must have the "
            "same length: one list of accepted answers per prediction"
        )
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(pred, str):
            raise ValueError(f"predictions[{i}] must be a str, got {type(pred).__name__}")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f"references[{i}] must be a non-empty list of str (wrap a single answer as [answer]),"
                f" got {refs!r}"
            )
