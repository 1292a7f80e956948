"""The trajectories stage: the run's SFT trajectories of one split, built (or resumed) from the
recipe by ``data_pipeline.trajectories`` (the paper's automatic supervision)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from awares_rl.core.run_paths import RunPaths
from awares_rl.workspace import base_model, ensure_data
from data_pipeline.datasets import read_samples
from data_pipeline.trajectories import TrajectoryBuilder, make_builder, ray_process, run_batches
from data_pipeline.trajectory_report import stats_table, write_report

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig


def build_split(cfg: RecipeConfig, split: str = "train", model_dir: str | Path | None = None,
                out: str | Path | None = None, limit: int | None = None, progress: bool = True,
                builder: TrajectoryBuilder | None = None) -> dict[str, Any]:
    """Build (or resume) a split's trajectories with the base model; returns the stats.
    ``builder`` (one engine for several splits, see ``make_builder``; the caller closes it) is used
    when given; otherwise one is made and closed here."""
    tc = cfg.trajectories
    data_file = ensure_data(cfg, split)
    samples = read_samples(data_file)[0]
    model_dir = Path(model_dir or base_model(cfg))
    out = Path(out) if out else RunPaths(cfg.run.dir).trajectories(split)
    meta = {"model": str(model_dir.resolve()), "data": str(data_file.resolve()),
            "low_res_scale": cfg.rollout.low_res_scale, "correct_threshold": cfg.reward.correct_threshold}
    max_pixels = cfg.data.max_image_pixels
    if tc.num_workers > 1:
        args = (str(model_dir), cfg.rollout, cfg.model, tc, cfg.reward, cfg.run.seed)
        process = ray_process(args, tc.num_workers, cfg.rollout, data_file.parent, out.parent, split, max_pixels)
        run_batches(samples, tc, process, out, limit, progress, meta)
    else:
        owned = builder is None
        builder = builder or make_builder(model_dir, cfg.rollout, cfg.model, tc, cfg.reward, cfg.run.seed)
        try:
            run_batches(samples, tc, lambda bs: (builder.process(b, data_file.parent, out.parent, split, max_pixels)
                                                 for b in bs),
                        out, limit, progress, meta)
        finally:
            if owned:  # its engines' memory goes back before the next stage starts its own
                builder.close()
    stats = write_report(out, cfg.reward.correct_threshold)
    Console().print(stats_table(stats))
    print(f"wrote {stats['overall']['n']} trajectories to {out} ({stats['skipped']} skipped)")
    return stats
