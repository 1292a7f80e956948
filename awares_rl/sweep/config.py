"""SweepConfig (the recipe's ``sweep:`` section) and its search space, validated at load time.

A dimension is a dotted numeric recipe key with either a list of values (grid points; random
search draws among them) or a range ``{low, high, log}`` (random search only)::

    sweep:
      search: grid
      space:
        reward.lam: [0.0, 0.2, 0.4]
        reward.alpha_use: [0.05, 0.3]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# Keys a trial may not change: they decide where it writes and what the sweep itself is.
FIXED_SECTIONS = ("run", "sweep")


def _default_space() -> dict[str, Any]:
    # alpha_miss stays above alpha_use + lam (0.6 at most) so every draw is a valid reward
    return {"reward.alpha_miss": {"low": 0.7, "high": 1.0},
            "reward.alpha_use": {"low": 0.0, "high": 0.3},
            "reward.lam": {"low": 0.0, "high": 0.3}}


@dataclass(frozen=True)
class Dimension:
    """One swept key: grid/choice ``values``, or a ``low``-``high`` range (log-uniform if ``log``)."""

    key: str
    values: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False


@dataclass(frozen=True)
class SweepConfig:
    name: str = "reward"  # the sweep's folder: <run dir>/sweeps/<name>
    search: Literal["grid", "random"] = "random"  # grid: every point once; random: num_trials draws
    space: dict[str, Any] = field(default_factory=_default_space)  # dotted key -> [values] | {low, high, log}
    num_trials: int | None = None  # random: trials drawn (None = 6); grid: None or the grid's size
    grpo_steps: int = 15  # GRPO steps of each trial (from the run's SFT checkpoint)
    max_concurrent: int = 1  # trials at once (each reserves a whole GRPO run's actors)
    eval_split: Literal["train", "val", "test"] = "val"  # each trial's policy is evaluated here
    eval_n: int = 0  # samples of eval_split evaluated (0: all)
    overrides: list[str] = field(default_factory=list)  # key=value applied to every trial, e.g. grpo.lr=5e-5

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"sweep.name={self.name!r} must be a plain folder name, e.g. reward")
        if self.grpo_steps < 1 or self.max_concurrent < 1 or self.eval_n < 0:
            raise ValueError("sweep.grpo_steps and sweep.max_concurrent must be >= 1, sweep.eval_n >= 0")
        if self.num_trials is not None and self.num_trials < 1:
            raise ValueError(f"sweep.num_trials must be >= 1 (or null), got {self.num_trials}")
        dims = search_space(self)
        if self.search == "grid" and self.num_trials not in (None, grid_size(dims)):
            raise ValueError(f"sweep.num_trials={self.num_trials} but the grid has {grid_size(dims)} points; "
                             "drop num_trials (a grid runs every point once) or use search: random")
        for item in self.overrides:
            if "=" not in item or item.split("=", 1)[0].split(".")[0] in FIXED_SECTIONS:
                raise ValueError(f"sweep.overrides: {item!r} must be key=value outside the run and sweep sections")

    @property
    def trials(self) -> int:
        return grid_size(search_space(self)) if self.search == "grid" else self.num_trials or 6


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"sweep.space.{key}: {value!r} is not a finite number")
    return value  # an int stays an int (integer keys such as grpo.mini_batches)


def parse_dimension(key: str, raw: Any, search: str) -> Dimension:
    """``raw`` (a YAML list or {low, high, log} mapping) as a Dimension; ValueError names the key."""
    if isinstance(raw, list):
        if not raw:
            raise ValueError(f"sweep.space.{key}: the list of values is empty")
        return Dimension(key, tuple(_number(key, v) for v in raw))
    if isinstance(raw, dict):
        if search == "grid":
            raise ValueError(f"sweep.space.{key}: a grid needs a list of values, e.g. {key}: [0.0, 0.1]")
        unknown = sorted(set(raw) - {"low", "high", "log"})
        if unknown or "low" not in raw or "high" not in raw:
            raise ValueError(f"sweep.space.{key}: a range is {{low: L, high: H, log: false}}, got {raw!r}")
        low, high, log = _number(key, raw["low"]), _number(key, raw["high"]), bool(raw.get("log", False))
        if not low < high or (log and low <= 0):
            raise ValueError(f"sweep.space.{key}: needs low < high (and low > 0 with log: true), got {raw!r}")
        return Dimension(key, low=low, high=high, log=log)
    raise ValueError(f"sweep.space.{key}: expected a list of values or {{low, high}}, got {raw!r}")


def search_space(cfg: SweepConfig) -> list[Dimension]:
    """The space's dimensions in the recipe's order; ValueError names the first bad entry."""
    if not cfg.space:
        raise ValueError("sweep.space is empty; name at least one key, e.g. reward.lam: [0.0, 0.2]")
    return [parse_dimension(k, v, cfg.search) for k, v in cfg.space.items()]


def grid_size(dims: list[Dimension]) -> int:
    return math.prod(len(d.values) or 1 for d in dims)


def grid_points(dims: list[Dimension]) -> list[dict[str, float]]:
    """Every combination of the dimensions' values (grid search), in row-major order."""
    return [dict(zip([d.key for d in dims], combo)) for combo in itertools.product(*(d.values for d in dims))]


def check_keys(recipe: Any, dims: list[Dimension]) -> None:
    """Each key is ``section.field`` of the recipe, numeric and not in ``FIXED_SECTIONS``;
    ValueError names the key and what is valid."""
    sections = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}
    for d in dims:
        parts = d.key.split(".")
        if len(parts) != 2 or parts[0] not in sections or parts[0] in FIXED_SECTIONS:
            valid = ", ".join(s for s in sections if s not in FIXED_SECTIONS)
            raise ValueError(f"sweep.space: {d.key!r} is not section.key of a recipe section ({valid})")
        section = sections[parts[0]]
        hints = typing.get_type_hints(type(section))
        if parts[1] not in hints:
            raise ValueError(f"sweep.space: {d.key!r}: {parts[0]} has no key {parts[1]!r}; "
                             f"valid keys: {', '.join(sorted(hints))}")
        if hints[parts[1]] not in (float, int):
            raise ValueError(f"sweep.space: {d.key!r} is not a number field; sweep reward weights such as reward.lam")
