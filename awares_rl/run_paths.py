"""Where a run keeps its stages: data, the initial tiny model, and each stage's checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("grpo", "sft", "base", "init")  # newest first


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
