"""What two GRPO runs of the same seed may differ in: their wall-clock metrics. One list for the
tests that compare a disturbed run (killed and resumed, a worker lost) with an undisturbed one."""

from __future__ import annotations

from collections.abc import Iterable

VOLATILE = ("time/", "perf/", "learner/step_s", "sync/seconds", "sync/load_s")


def stable(row: dict, also: Iterable[str] = ()) -> dict:
    """``row`` without its wall-clock metrics (``VOLATILE`` prefixes) and the keys in ``also``."""
    skip = set(also)
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE) and k not in skip}
