"""PNG figures a run leaves in its directory: the accuracy-vs-RTR trade-off of the final table
and the learning curves of each stage (matplotlib, headless)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from awares_rl.core.run_paths import RunPaths  # noqa: E402


def accuracy_vs_rtr(rows: Mapping[str, Mapping], path: str | Path, title: str = "") -> Path:
    """Scatter of accuracy % (y) against the paper's RTR (x), one labelled point per row
    (``rows[name]`` has ``accuracy`` and ``rtr``, as in ``results.json``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, r in rows.items():
        ax.scatter(r["rtr"], r["accuracy"], s=40)
        ax.annotate(name, (r["rtr"], r["accuracy"]), textcoords="offset points", xytext=(6, -3))
    ax.set_xlabel("retained token ratio (RTR, paper's formula)")
    ax.set_ylabel("accuracy %")
    ax.set_xlim(0, 1.1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Accuracy vs visual tokens")
    return _save(fig, path)


def pareto_plot(points: Sequence[tuple[str, float, float]], front: Sequence[int],
                references: Mapping[str, tuple[float, float]], path: str | Path, title: str = "") -> Path:
    """A sweep's trials as (label, accuracy %, RTR) points, the non-dominated ``front`` (indices
    into ``points``) joined and labelled with its weights, and ``references`` (name -> (accuracy,
    RTR), e.g. low-res only / full-res only) as grey diamonds. Left: the whole RTR range; right:
    zoomed on the trials, where the front's labels are readable."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=120)
    for ax, zoom in zip(axes, (False, True)):
        ax.scatter([p[2] for p in points], [p[1] for p in points], s=30, color="tab:blue", alpha=0.6,
                   label="trials", zorder=3)
        fr = [points[i] for i in front]
        ax.plot([p[2] for p in fr], [p[1] for p in fr], "-o", color="tab:red", ms=6, label="Pareto front", zorder=4)
        for (acc, rtr), labels in (_coincident(fr) if zoom else {}).items():
            ax.annotate("\n".join(labels), (rtr, acc), textcoords="offset points", xytext=(6, 4), fontsize=7)
        for name, (acc, rtr) in references.items():
            ax.scatter([rtr], [acc], marker="D", s=45, color="grey", zorder=2)
            ax.annotate(name, (rtr, acc), textcoords="offset points", xytext=(6, -10), fontsize=8, color="dimgrey")
        ax.set_xlabel("retained token ratio (RTR, paper's formula)")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
        if zoom and points:
            xs, ys = [p[2] for p in points], [p[1] for p in points]
            pad_x, pad_y = max(0.01, 0.15 * (max(xs) - min(xs))), max(0.5, 0.15 * (max(ys) - min(ys)))
            ax.set_xlim(min(xs) - pad_x, max(xs) + 3 * pad_x)
            ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
            ax.set_title("trials (zoomed), front labelled with its weights")
        else:
            ax.set_xlim(0, 1.1)
            ax.legend(fontsize=8, loc="lower right")
            ax.set_title(title or "Reward sweep: accuracy vs visual tokens")
    return _save(fig, path)


def _coincident(points: Sequence[tuple[str, float, float]]) -> dict[tuple[float, float], list[str]]:
    """Labels by position, so that tied points get one stacked annotation instead of overprinting."""
    out: dict[tuple[float, float], list[str]] = {}
    for label, acc, rtr in points:
        out.setdefault((acc, rtr), []).append(label)
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (empty when the file is missing)."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
    return [s for s, _ in pts], [v for _, v in pts]


def _panel(ax, rows: Sequence[dict], keys: Sequence[str], title: str, ylabel: str = "") -> None:
    for key in keys:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def learning_curves(run_dir: str | Path, path: str | Path) -> Path:
    """A 2 x 3 figure of a run's stages: pretraining loss and grounding accuracy, SFT train/val
    loss, GRPO reward and accuracy, RTR and crop rate, and PPO clip fraction / KL per step."""
    run = Path(run_dir)
    paths = RunPaths(run)
    log_file = paths.logs("pretrain") / "pretrain_log.json"
    pre = json.loads(log_file.read_text()) if log_file.is_file() else {}
    curve = pre.get("curve", [])
    sft, grpo = read_metrics(paths.metrics("sft")), read_metrics(paths.metrics("grpo"))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), dpi=110)
    _panel(axes[0, 0], curve, ["loss"], "pretrain: loss", "NLL")
    _panel(axes[0, 1], pre.get("probes", []), ["grounding", "large_low", "medium_low", "small_low"],
           "pretrain: val probes (low-res view)", "accuracy")
    _panel(axes[0, 2], sft, ["train/loss", "val/loss"], "SFT: weighted NLL", "loss")
    _panel(axes[1, 0], grpo, ["rollout/reward_total", "rollout/accuracy"], "GRPO: sampled episodes")
    _panel(axes[1, 1], grpo, ["rollout/rtr", "rollout/crop_rate", "rollout/crop_rate_needed", "rollout/crop_rate_not_needed"],
           "GRPO: RTR, crop rate (all, needed, not needed)")
    _panel(axes[1, 2], grpo, ["learner/clip_fraction", "learner/kl_ref"], "GRPO: PPO clip fraction, KL to SFT")
    fig.suptitle(f"learning curves: {run.name}")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
