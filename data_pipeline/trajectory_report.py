"""The statistics report of a trajectory file: crop share by metric and split, crop ids, low-res
and full-res accuracy, truncated answers, agreement with the generator's ``needs_high_res``
(``X.stats.json``)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from awares_rl.core.sample import iter_jsonl
from awares_rl.core.trajectory import Trajectory, read_trajectories
from data_pipeline.trajectories import _paths
from reward.judges import is_correct


def _group_stats(trajs: Sequence[Trajectory], threshold: float) -> dict[str, Any]:
    n = len(trajs)
    share = lambda xs: round(sum(xs) / n, 4) if n else None  # noqa: E731
    return {"n": n, "needs_crop": share([t.needs_crop for t in trajs]),
            "low_res_accuracy": share([is_correct(t.low_res_score, threshold) for t in trajs]),
            "full_res_accuracy": share([is_correct(t.full_res_score, threshold) for t in trajs])}


def trajectory_stats(trajs: Sequence[Trajectory], skipped: Sequence[dict], threshold: float) -> dict[str, Any]:
    """Crop share, accuracies (overall, by metric, by split), crop-id histogram, and agreement of
    the judge's needs_crop with the generator's ``needs_high_res`` where it is known."""
    by: dict[str, dict[str, list[Trajectory]]] = {"metric": defaultdict(list), "split": defaultdict(list)}
    for t in trajs:
        by["metric"][t.metric or "none"].append(t)
        by["split"][t.split or "none"].append(t)
    known = [t for t in trajs if t.needs_high_res is not None]
    confusion = Counter(f"high_res_{t.needs_high_res}_crop_{t.needs_crop}".lower() for t in known)
    agree = sum(t.needs_high_res == t.needs_crop for t in known)
    return {
        "overall": _group_stats(trajs, threshold),
        "by_metric": {k: _group_stats(v, threshold) for k, v in sorted(by["metric"].items())},
        "by_split": {k: _group_stats(v, threshold) for k, v in sorted(by["split"].items())},
        "crop_id_histogram": {str(c): sum(c in t.crop_ids for t in trajs) for c in range(9)},
        "crops_per_call": dict(sorted(Counter(str(len(t.crop_ids)) for t in trajs if t.needs_crop).items())),
        "box_source": dict(Counter(t.box_source for t in trajs if t.needs_crop)),
        "needs_high_res_agreement": {
            "n_known": len(known), "agreement": round(agree / len(known), 4) if known else None,
            **{f"high_res_{a}_crop_{b}": confusion[f"high_res_{a}_crop_{b}"]
               for a in ("true", "false") for b in ("true", "false")},
        },
        "truncated": truncated_stats(trajs),
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(r["reason"].split(":")[0] for r in skipped)),
        "correct_threshold": threshold,
    }


def truncated_stats(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """How many low-res / full-res answers hit ``trajectories.max_new_tokens`` (judged as they
    stand: a cut answer usually scores 0, so its label may be wrong), and their share."""
    low, full = sum(t.low_res_truncated for t in trajs), sum(t.full_res_truncated for t in trajs)
    share = round((low + full) / (2 * len(trajs)), 4) if trajs else None
    return {"low_res": low, "full_res": full, "share": share}


def write_report(out: str | Path, threshold: float) -> dict[str, Any]:
    """Stats of the whole output file (old and new lines) -> ``X.stats.json``; returns them."""
    out = Path(out)
    skipped_path, _, stats_path = _paths(out)
    skipped = [json.loads(line) for _, line in iter_jsonl(skipped_path)] if skipped_path.exists() else []
    stats = trajectory_stats(read_trajectories(out) if out.exists() else [], skipped, threshold)
    stats_path.write_text(json.dumps(stats, indent=1))
    return stats


def stats_table(stats: dict[str, Any]) -> Table:
    """The report as a rich table: one row overall, then by metric and by split."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    table = Table(title="SFT trajectories")
    for col in ("group", "n", "needs crop", "low-res acc", "full-res acc"):
        table.add_column(col, justify="left" if col == "group" else "right")
    rows = [("all", stats["overall"])] + [(f"metric={k}", v) for k, v in stats["by_metric"].items()]
    rows += [(f"split={k}", v) for k, v in stats["by_split"].items()]
    for name, g in rows:
        table.add_row(name, str(g["n"]), pct(g["needs_crop"]), pct(g["low_res_accuracy"]), pct(g["full_res_accuracy"]))
    hist = " ".join(f"{c}:{n}" for c, n in stats["crop_id_histogram"].items())
    agree = stats["needs_high_res_agreement"]
    cut = stats["truncated"]
    table.caption = (f"crop ids {hist} | needs_high_res agreement {pct(agree['agreement'])} of "
                     f"{agree['n_known']} | truncated answers {cut['low_res']} low-res, {cut['full_res']} "
                     f"full-res | skipped {stats['skipped']}")
    return table
