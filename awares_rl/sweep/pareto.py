"""The accuracy / RTR trade-off of a sweep's trials: the non-dominated front and the trial to
recommend for a user's target. Pure functions over ``(accuracy, rtr)`` points."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (accuracy, rtr) is at least as accurate and as cheap as ``b``, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, by increasing RTR (then accuracy).

    Example: [(90, .25), (95, .30), (93, .31), (95, .30)] -> [0, 1, 3] ((93, .31) is dominated
    by (95, .30); equal points do not dominate each other)."""
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][1], points[i][0], i))


def recommend(points: Sequence[tuple[float, float]], max_rtr: float | None = None,
              min_accuracy: float | None = None) -> int | None:
    """The trial to pick for one target (give exactly one): ``max_rtr``, the most accurate point
    with RTR <= max_rtr (ties: the cheaper); ``min_accuracy``, the cheapest point with accuracy
    >= min_accuracy (ties: the more accurate). None when no point meets it."""
    if (max_rtr is None) == (min_accuracy is None):
        raise ValueError("give exactly one target: max_rtr or min_accuracy")
    if max_rtr is not None:
        ok = [i for i, (_, r) in enumerate(points) if r <= max_rtr]
        return max(ok, key=lambda i: (points[i][0], -points[i][1]), default=None)
    ok = [i for i, (a, _) in enumerate(points) if a >= min_accuracy]
    return min(ok, key=lambda i: (points[i][1], -points[i][0]), default=None)
