"""The recipe's ``learner`` section (LearnerWorker actors, DeepSpeed or torch) and the optimiser
and checkpoint fields every training stage shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from awares_rl.core.config_io import require
from cluster.resources import THREADS_HELP


@dataclass(frozen=True)
class LearnerConfig:
    backend: Literal["deepspeed", "torch"] = "deepspeed"  # torch: plain torch, grads all-reduced by hand
    num_workers: int = 1  # data-parallel LearnerWorker actors
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3 (backend=deepspeed)
    cpus_per_worker: float = 1.0  # logical CPUs each worker reserves on Ray (placement only)
    threads: int = 0  # torch threads: 0 = cpus_per_worker; -1 = all the node's cores (stages take turns)
    gpus_per_worker: float = 0.0  # 1.0 on GPU clusters (NCCL; bf16 when model.dtype=bfloat16)
    micro_batch_size: int = 4  # sequences per forward/backward; gradients accumulate over a step
    gradient_checkpointing: bool = False  # recompute activations in backward (large models)
    use_ray: bool = True  # false: one worker inside the driver process (needs num_workers=1)
    # the vision tower (ViT + merger) gets no gradient and no optimizer state, and GRPO's weight
    # sync sends only the language model (it is the start model's ViT everywhere)
    freeze_vision: bool = False
    # a GRPO group's episodes share their prompt: run it once per group (learner/prefix.py; same
    # logprobs). Off under gradient checkpointing (it drops the KV cache) and ZeRO-3.
    share_prefix: bool = True
    sync_bucket_mb: float = 64.0  # GRPO weight sync: the learner puts its weights in buckets of about this size

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.micro_batch_size < 1:
            raise ValueError("learner.num_workers and learner.micro_batch_size must be >= 1")
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not self.use_ray and self.num_workers != 1:
            raise ValueError("learner.use_ray=false runs one worker in the driver: set learner.num_workers=1")
        require(self.cpus_per_worker > 0, "learner.cpus_per_worker", self.cpus_per_worker, "> 0")
        require(self.threads >= -1, "learner.threads", self.threads, THREADS_HELP)
        require(self.gpus_per_worker >= 0, "learner.gpus_per_worker", self.gpus_per_worker, ">= 0")
        require(self.sync_bucket_mb > 0, "learner.sync_bucket_mb", self.sync_bucket_mb,
                "> 0 (MB per object-store bucket of a weight sync, e.g. 64)")


def check_training(section: str, lr: float, grad_clip: float, save_every: int, keep: int) -> None:
    """The optimiser and checkpoint fields SFT and GRPO share."""
    require(lr > 0, f"{section}.lr", lr, "> 0 (a peak AdamW learning rate, e.g. 1e-5)")
    require(grad_clip >= 0, f"{section}.grad_clip", grad_clip, ">= 0 (0: no clipping)")
    require(save_every >= 0, f"{section}.save_every", save_every, ">= 0 (0: only the final model)")
    require(keep >= 1, f"{section}.keep_checkpoints", keep, ">= 1 (resume needs one)")
