"""Where a run keeps its files: the one place that knows the layout of a run directory.

    <run>/data/{train,val,test}.jsonl          synthetic data (when data.dir is unset)
    <run>/models/{init,base,sft,grpo}/          each stage's final model
    <run>/{pretrain,sft,grpo,eval}/             a stage's logs: metrics.jsonl, W&B files
    <run>/checkpoints/{sft,grpo}/step_*/        resumable checkpoints
    <run>/trajectories/<split>.jsonl            SFT trajectories (+ .stats.json)
    <run>/sweeps/<name>/                        reward sweeps (trials/<key>/ is a run of its own)
    <run>/results.json, <run>/*.png             the final table and its figures
    <run>/logs/<stage>.log, <stage>.ray         a pipeline stage's log (ours and the libraries'),
                                                a link to its Ray session's worker logs
    <run>/<stage>/episodes.png                  the last logged step's episodes, crops drawn
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from awares_rl.core.config_io import require

STAGES = ("grpo", "sft", "base", "init")  # models, newest first
LOG_STAGES = ("pretrain", "sft", "grpo", "eval")  # stages that log into a folder of their own
METRICS_FILE = "metrics.jsonl"  # one JSON row per step in a stage's log folder


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def model(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return self.root / "models" / stage

    def latest_model(self) -> Path | None:
        """The newest stage's model directory that holds a config.json, if any."""
        for stage in STAGES:
            if (self.model(stage) / "config.json").is_file():
                return self.model(stage)
        return None

    def logs(self, stage: str) -> Path:
        """A stage's log folder (``metrics.jsonl``, W&B files)."""
        if stage not in LOG_STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages that log: {', '.join(LOG_STAGES)}")
        return self.root / stage

    def metrics(self, stage: str) -> Path:
        return self.logs(stage) / METRICS_FILE

    def checkpoints(self, stage: str) -> Path:
        """Where ``stage`` (sft, grpo) keeps its resumable ``step_*`` checkpoints."""
        if stage not in ("sft", "grpo"):
            raise ValueError(f"stage {stage!r} keeps no checkpoints; sft and grpo do")
        return self.root / "checkpoints" / stage

    def trajectories(self, split: str) -> Path:
        return self.root / "trajectories" / f"{split}.jsonl"

    def trajectory_stats(self, split: str) -> Path:
        return self.root / "trajectories" / f"{split}.stats.json"

    def sweep(self, name: str) -> Path:
        return self.root / "sweeps" / name

    @property
    def results(self) -> Path:
        """The final table (``awares-rl run``; a sweep trial's result row)."""
        return self.root / "results.json"

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def log_file(self, stage: str) -> Path:
        """The log of one ``awares-rl run`` stage (data, base, trajectories, sft, grpo, eval)."""
        return self.root / "logs" / f"{stage}.log"

    def ray_logs(self, stage: str) -> Path:
        """A link to the worker logs of the Ray session a stage ran on (actors' stdout, vLLM, DeepSpeed)."""
        return self.root / "logs" / f"{stage}.ray"

    def episode_grid(self, stage: str) -> Path:
        """A PNG of the last logged step's episodes (the low-res view, crops drawn)."""
        return self.logs(stage) / "episodes.png"


@dataclass(frozen=True)
class RunConfig:
    name: str = "awares"  # run name: outputs go to out_dir/name
    out_dir: str = "runs"  # where run directories are created
    seed: int = 0  # global seed (data order, sampling, init)
    threads: int = 0  # torch threads for the driver process; 0 = all cores

    def __post_init__(self) -> None:
        require(self.seed >= 0, "run.seed", self.seed, ">= 0 (numpy refuses negative seeds)")
        require(self.threads >= 0, "run.threads", self.threads, ">= 0 (0: all cores)")
        require(bool(self.name.strip()), "run.name", self.name, "a non-empty folder name")

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name
