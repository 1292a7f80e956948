"""Experiment tracking: a small wrapper around one Weights & Biases run, and the per-step episode
metrics it logs.

Offline by default (no network; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later);
``online`` needs ``WANDB_API_KEY``; ``disabled`` logs nothing. The run id is kept in
``<run_dir>/wandb_run_id`` so a resumed training continues the same W&B run.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import wandb
from PIL import Image, ImageDraw

from awares_rl.core.config_io import require
from awares_rl.core.crops import CROP_NAMES, NUM_CROPS, crop_boxes
from awares_rl.core.episode import Episode
from awares_rl.core.run_paths import METRICS_FILE

Mode = Literal["offline", "online", "disabled"]
MODES: tuple[str, ...] = ("offline", "online", "disabled")
RUN_ID_FILE = "wandb_run_id"

# One colour per crop id, so a crop has the same colour in every row of the table.
CROP_COLOURS: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
    "#42d4f4", "#f032e6", "#bfef45", "#ffe119",
)  # fmt: skip

EPISODE_COLUMNS: tuple[str, ...] = (
    "sample_id", "group", "image", "question", "turns", "crops", "final_answer", "gold_answers",
    "reward_total", "reward_answer", "reward_crop_cost", "reward_format", "judge",
    "rtr", "visual_tokens", "flags",
)  # fmt: skip

@dataclass(frozen=True)
class LoggingConfig:
    wandb: bool = True  # log to Weights & Biases
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "awares-rl"
    table_every: int = 10  # log an episode table every N steps

    def __post_init__(self) -> None:
        require(self.table_every >= 0, "logging.table_every", self.table_every, ">= 0 (0: never)")



def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means over a batch of episodes, for logging (keys are unprefixed; add ``train/`` etc.).

    Episodes with ``error`` set count only toward ``error_rate``; every other mean is over the
    episodes that ran, and the reward means over those that ran and were scored. A mean over no
    episodes is NaN. Accuracy is left to the caller (it depends on the metric's threshold);
    ``answer_score`` is the judge's mean score. ``crop_rate_needed`` / ``crop_rate_not_needed``:
    the crop rate over the episodes whose sample ``needs_high_res`` is True / False (the oracle or
    the trajectory label: does the policy crop where it must, and only there).
    """
    ran = [ep for ep in episodes if ep.error is None]
    scored = [ep.reward for ep in ran if ep.reward is not None]
    return {
        "episodes": float(len(episodes)),
        "error_rate": _mean([float(ep.error is not None) for ep in episodes]),
        "reward_total": _mean([r.total for r in scored]),
        "answer_score": _mean([r.answer for r in scored]),
        "crop_cost": _mean([r.crop_cost for r in scored]),
        "format_reward": _mean([r.format for r in scored]),
        "crop_rate": _mean([float(ep.used_crops) for ep in ran]),
        "crop_rate_needed": _mean([float(ep.used_crops) for ep in ran if ep.needs_high_res is True]),
        "crop_rate_not_needed": _mean([float(ep.used_crops) for ep in ran if ep.needs_high_res is False]),
        "num_crops": _mean([float(len(ep.crop_ids)) for ep in ran]),
        "rtr": _mean([ep.rtr for ep in ran]),
        "visual_tokens": _mean([float(ep.visual_tokens) for ep in ran]),
        "invalid_tool_call_rate": _mean([float(ep.invalid_tool_call is not None) for ep in ran]),
        "truncation_rate": _mean([float(ep.truncated) for ep in ran]),
        "response_tokens": _mean([float(sum(ep.action_mask)) for ep in ran]),
        "turns": _mean([float(ep.num_turns) for ep in ran]),
    }


def draw_crop_boxes(
    low_res_view: Image.Image, image_size: tuple[int, int], crop_ids: Sequence[int]
) -> Image.Image:
    """An RGB copy of ``low_res_view`` with the boxes of ``crop_ids`` (taken in the original image
    of ``image_size`` = (width, height)) scaled onto it and named, one colour per crop id."""
    view = low_res_view.convert("RGB")  # always a copy
    draw = ImageDraw.Draw(view)
    sx, sy = view.width / image_size[0], view.height / image_size[1]
    line = max(1, round(min(view.size) / 112))
    valid = [c for c in crop_ids if 0 <= c < NUM_CROPS]  # a logger must not crash on a bad id
    for crop_id, (x0, y0, x1, y1) in zip(valid, crop_boxes(*image_size, valid)):
        colour = CROP_COLOURS[crop_id]
        box = (round(x0 * sx), round(y0 * sy), round(x1 * sx) - 1, round(y1 * sy) - 1)
        draw.rectangle(box, outline=colour, width=line)
        draw.text((box[0] + line + 1, box[1] + line), CROP_NAMES[crop_id], fill=colour)
    return view


def _flags(ep: Episode) -> str:
    flags = [f"error: {ep.error}"] if ep.error else []
    flags += [f"invalid tool call: {ep.invalid_tool_call}"] if ep.invalid_tool_call else []
    flags += ["truncated"] if ep.truncated else []
    flags += ["no answer"] if ep.final_answer is None and not ep.error else []
    return ", ".join(flags)


def annotated_view(ep: Episode) -> tuple[Image.Image, str] | None:
    """The episode's low-res view with the crops taken drawn on it, and their names (the caption);
    None for an episode without images (it failed before it saw one)."""
    if not ep.images:
        return None
    names = ", ".join(CROP_NAMES[c] for c in ep.crop_ids if 0 <= c < NUM_CROPS)
    return draw_crop_boxes(ep.images[0], ep.image_size, ep.crop_ids), names or "low-res only"


def episode_row(ep: Episode, view: tuple[Image.Image, str] | None = None) -> list[Any]:
    """One table row (in ``EPISODE_COLUMNS`` order); the image is ``view`` (default: the
    episode's ``annotated_view``)."""
    view = view or annotated_view(ep)
    image = wandb.Image(view[0], caption=view[1]) if view else None
    r = ep.reward
    reward = [r.total, r.answer, r.crop_cost, r.format, r.judge] if r else [None] * 5
    return [
        ep.sample_id, ep.group_index, image, ep.question,
        "\n".join(f"[turn {i + 1}] {text}" for i, text in enumerate(ep.turn_texts)),
        ", ".join(f"{c}:{CROP_NAMES[c]}" if 0 <= c < NUM_CROPS else str(c) for c in ep.crop_ids),
        ep.final_answer, " | ".join(ep.answers),
        *reward, ep.rtr, ep.visual_tokens, _flags(ep),
    ]  # fmt: skip


def grid_title(ep: Episode, caption: str) -> str:
    """A grid cell's title: the sample, the crops taken, the answer and its reward."""
    reward = f"  R {ep.reward.total:.2f}" if ep.reward else ""
    return f"{ep.sample_id}: {caption}\n-> {ep.final_answer}{reward}"


def save_grid(views: Sequence[tuple[Image.Image, str]], path: Path, columns: int = 4) -> Path:
    """The views side by side, ``columns`` to a row, each with its caption above it, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(len(views) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, views):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


class Tracker:
    """One W&B run for one training run.

    Args:
        project: W&B project.
        name: the run's display name.
        run_dir: the training run's folder; W&B writes under ``<run_dir>/wandb`` (or under
            ``$WANDB_DIR`` when set) and the run id is kept in ``<run_dir>/wandb_run_id``.
        config: the recipe, as a plain dict.
        mode: ``offline`` (default), ``online`` (needs ``WANDB_API_KEY``) or ``disabled``.
        resume_id: continue this W&B run; by default the id stored in ``run_dir``, if any.
    """

    def __init__(
        self,
        project: str,
        name: str,
        run_dir: str | Path,
        config: dict[str, Any],
        mode: Mode = "offline",
        resume_id: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"W&B mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            raise ValueError(
                "W&B mode 'online' needs WANDB_API_KEY in the environment: export it, or set "
                "logging.wandb_mode=offline and run `wandb sync` later"
            )
        self.mode = mode
        self.run_dir = Path(run_dir)
        self.run: wandb.Run | None = None
        self.run_id: str | None = None
        if mode == "disabled":
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)  # wandb warns about a missing root dir
        id_file = self.run_dir / RUN_ID_FILE
        stored = id_file.read_text().strip() if id_file.is_file() else None
        self.run_id = resume_id or stored or uuid.uuid4().hex[:8]
        id_file.write_text(self.run_id + "\n")
        self.run = wandb.init(
            project=project,
            name=name,
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config=config,
            mode=mode,
            id=self.run_id,
            resume="allow",
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at training step ``step`` (steps must not decrease)."""
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def log_episodes(self, episodes: Sequence[Episode], step: int, max_rows: int = 16, key: str = "episodes",
                     grid: Path | None = None) -> None:
        """Log the first ``max_rows`` episodes as a ``wandb.Table`` (columns: EPISODE_COLUMNS) and
        their annotated views as a list of ``wandb.Image`` under ``<key>_images``: offline W&B
        writes a table's image cells as the word "Image" only (wandb#4611), a list's as PNGs under
        the run's ``files/media/images``. ``grid``: save the views as one PNG there (W&B or not)."""
        shown = episodes[:max_rows]
        views = [annotated_view(ep) for ep in shown]
        drawn = [v for v in views if v is not None]
        if grid is not None and drawn:
            save_grid([(v[0], grid_title(ep, v[1])) for ep, v in zip(shown, views) if v is not None], grid)
        if self.run is None:
            return
        rows = [episode_row(ep, view) for ep, view in zip(shown, views)]
        logged: dict[str, Any] = {key: wandb.Table(columns=list(EPISODE_COLUMNS), data=rows)}
        if drawn:
            logged[f"{key}_images"] = [wandb.Image(image, caption=caption) for image, caption in drawn]
        self.run.log(logged, step=step)

    def log_accuracy_vs_rtr(
        self, rows: dict[str, tuple[float, float]], step: int, key: str = "accuracy_vs_rtr"
    ) -> None:
        """Scatter plot of accuracy (y) against RTR (x), one point per mode.

        ``rows`` maps a mode (e.g. low_res, full_res, sft, grpo) to ``(accuracy, rtr)``.
        """
        if self.run is None:
            return
        data = [[mode, rtr, acc] for mode, (acc, rtr) in rows.items()]
        table = wandb.Table(columns=["mode", "rtr", "accuracy"], data=data)
        plot = wandb.plot.scatter(
            table, "rtr", "accuracy", title="Accuracy vs retained token ratio"
        )
        self.run.log({key: plot}, step=step)

    def log_results(self, rows: dict[str, dict], images: dict[str, Path] | None = None, step: int = 0) -> None:
        """The final table (one row per model: accuracy, RTR, visual tokens, crop rate, Jaccard,
        grounding) as a ``wandb.Table`` and run summary, the accuracy-vs-RTR scatter, and PNGs."""
        if self.run is None:
            return
        keys = ("accuracy", "rtr", "visual_tokens", "crop_rate", "tool_call_validity", "crop_jaccard", "grounding")
        data = [[name, *(r.get(k) for k in keys)] for name, r in rows.items()]
        self.log_table("results", ["model", *keys], data, images, step=step)
        self.log_accuracy_vs_rtr({n: (r["accuracy"], r["rtr"]) for n, r in rows.items()}, step=step)
        self.summary({f"{n}/{k}": r[k] for n, r in rows.items() for k in keys if r.get(k) is not None})

    def log_table(self, key: str, columns: list[str], data: list[list], images: dict[str, Path] | None = None,
                  step: int = 0) -> None:
        """A ``wandb.Table`` under ``key`` and PNG files (name -> path) as ``wandb.Image``s."""
        if self.run is None:
            return
        self.run.log({key: wandb.Table(columns=columns, data=data)}, step=step)
        for name, path in (images or {}).items():
            self.run.log({name: wandb.Image(str(path))}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Set run-level summary values (final accuracies, best step, ...)."""
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run and wait until its files are complete; safe to call twice.

        ``run.finish()`` alone returns while wandb-core may still be writing the run file, so
        this also shuts W&B's background service down (the next ``wandb.init`` starts a new one).
        """
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
            wandb.teardown(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


__all__ = ["Tracker", "annotated_view", "draw_crop_boxes", "episode_metrics", "episode_row", "grid_title", "save_grid"]


def stage_tracker(cfg, stage: str, out_dir: Path) -> Tracker:
    """The W&B run of one training stage of a recipe (``<run.name>-<stage>``), files in ``out_dir``."""
    from awares_rl.core.config_io import to_dict

    lc = cfg.logging
    return Tracker(lc.project, f"{cfg.run.name}-{stage}", out_dir, to_dict(cfg),
                   mode=lc.wandb_mode if lc.wandb else "disabled")


def truncate_metrics(out_dir: Path, step: int) -> int:
    """Keep the rows of ``out_dir/metrics.jsonl`` up to ``step`` (the checkpoint a run resumes
    from; 0 for a fresh start): the resumed run logs the later steps again. A line cut short by a
    kill is dropped too. Returns the number of lines dropped."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (s := _row_step(line)) is not None and s <= step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return len(lines) - len(kept)


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def log_step(tracker: Tracker, out_dir: Path, metrics: dict[str, float], step: int) -> None:
    """Log a step's metrics to W&B and append them to ``out_dir/metrics.jsonl``."""
    tracker.log(metrics, step=step)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")
