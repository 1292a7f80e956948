"""The recipe: every section's config, composed into ``RecipeConfig``, and the rules that span
sections. Each section lives beside the code it configures (``awares_rl.rollout.config``,
``reward.config``, ``awares_rl.grpo`` ...); this module only composes them, and sits above the
stages (ARCHITECTURE.md): nothing below the CLI imports it at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from awares_rl.core.config_io import ConfigError, load_yaml
from awares_rl.core.run_paths import RunConfig
from awares_rl.evaluate import EvalConfig
from awares_rl.grpo import GRPOConfig
from awares_rl.learner.config import LearnerConfig
from awares_rl.models.config import ModelConfig
from awares_rl.models.tiny import TinyModelConfig
from awares_rl.pretrain import PretrainConfig
from awares_rl.rollout.config import RolloutConfig
from awares_rl.sft import SFTConfig
from awares_rl.sweep.config import SweepConfig, check_keys, search_space
from awares_rl.tracking import LoggingConfig
from data_pipeline.config import DataConfig, SynthConfig
from data_pipeline.trajectories import TrajectoryConfig
from reward.config import RewardConfig


@dataclass(frozen=True)
class RecipeConfig:
    run: RunConfig = field(default_factory=RunConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        check_keys(self, search_space(self.sweep))  # swept keys exist and are numbers
        # the run owns these pretrain fields: refuse rather than silently replace a user's value
        base = PretrainConfig()
        for name, where in (("out_dir", "run.out_dir / run.name"), ("seed", "run.seed"),
                            ("synth", "the synth section"), ("model", "the tiny section")):
            if getattr(self.pretrain, name) != getattr(base, name):
                raise ValueError(f"pretrain.{name} is set by the recipe's {where}; set it there instead")
        step = self.tiny.model_family.side_step
        if self.model.path is None and self.synth.side_step % step:
            raise ValueError(
                f"synth.side_step = {self.synth.side_step} must be a multiple of {step} for the tiny "
                f"{self.tiny.family} (2 x its {step // 2} px per visual token), or the low-res view and "
                f"crops get resampled; set synth.side_step={step} (and min_side/max_side multiples of it)")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Load ``recipes/*.yaml`` with ``key.sub=value`` overrides; raises ConfigError."""
    return load_yaml(RecipeConfig, path, overrides)


__all__ = ["ConfigError", "RecipeConfig", "load_recipe"]
