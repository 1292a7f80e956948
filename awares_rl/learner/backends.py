"""The two training back-ends behind ``LearnerWorker``: DeepSpeed (ZeRO 0-3) and plain torch.

Both take a transformers model and a torch optimizer and expose the same five operations:
``forward_model`` (what to call for logits), ``backward(loss)``, ``step() -> grad norm`` (reduce
gradients across data-parallel ranks, clip, update, zero), ``full_state_dict()`` (every
parameter, gathered, on rank 0) and ``save/load`` of the optimizer state (never unpickled:
safetensors + JSON, or DeepSpeed's files through a weights_only ``torch.load``). The caller accumulates
gradients over any number of micro-batches and calls ``step()`` once per optimizer step.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path

import torch
import torch.distributed as dist

from awares_rl.checkpoint import (
    SAFE_FORMAT_HELP,
    CheckpointFormatError,
    load_model_weights,
    load_optimizer,
    save_optimizer,
)

BUCKET_ELEMENTS = 1 << 25  # gradients all-reduced in flat buckets of at most this many elements
OPTIMIZER_FILE = "optimizer.safetensors"  # torch backend, in trainer_state/


def freeze_vision(model) -> int:
    """``requires_grad = False`` on the model's vision tower (its family's ``vision_tower``: ViT and
    merger), before the optimizer is built, so neither backend gives it gradients or optimizer
    state (both take only trainable parameters); returns the number of parameters frozen."""
    from awares_rl.models.family import family_of

    params = list(family_of(model).vision_tower(model).parameters())
    for p in params:
        p.requires_grad_(False)
    return sum(p.numel() for p in params)


def init_process_group(backend: str, world_size: int) -> None:
    """torch.distributed from the env:// variables (``DistInfo.export``), once per process."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")


def deepspeed_config(zero_stage: int, micro_batch_size: int, grad_clip: float, bf16: bool) -> dict:
    """DeepSpeed config for caller-managed accumulation (``step()`` is the boundary)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # any number of backward() calls per step()
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # a torch AdamW (CPU has no fused DeepSpeed Adam)
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class TorchBackend:
    """Plain torch: gradients all-reduced by hand (flat buckets) when ``world_size > 1``."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, grad_clip: float, world_size: int,
                 dist_backend: str = "gloo") -> None:
        init_process_group(dist_backend, world_size)
        self.module = self.forward_model = model
        self.optimizer, self.grad_clip, self.world_size = optimizer, grad_clip, world_size

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _all_reduce_grads(self) -> None:
        params = self._params()
        for p in params:
            if p.grad is None:  # unused this step (e.g. no image): still takes part in the sum
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        for i, p in enumerate(params):
            bucket.append(p.grad)
            if i == len(params) - 1 or sum(g.numel() for g in bucket) >= BUCKET_ELEMENTS:
                flat = torch.cat([g.reshape(-1) for g in bucket])
                dist.all_reduce(flat)
                flat /= self.world_size
                for g, synced in zip(bucket, flat.split([g.numel() for g in bucket])):
                    g.copy_(synced.view_as(g))
                bucket = []

    def step(self) -> float:
        if self.world_size > 1:
            self._all_reduce_grads()
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self._params(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None  # parameters are whole on every rank: save_pretrained reads the module

    def save(self, state_dir: Path, rank: int) -> None:
        if rank == 0:  # the optimizer state is replicated
            save_optimizer(state_dir / OPTIMIZER_FILE, self.optimizer)

    def load(self, state_dir: Path) -> None:
        load_model_weights(self.module, state_dir.parent)  # DeepSpeed's own checkpoint has them
        load_optimizer(state_dir / OPTIMIZER_FILE, self.optimizer)


def deepspeed_safe_globals() -> list[type]:
    """The classes DeepSpeed pickles into its ZeRO optimizer shards (stages 1-3, fp32 and bf16;
    found with torch.serialization.get_unsafe_globals_in_checkpoint); the rest is tensors and
    plain containers. All three are plain records (a class, an Enum, a dataclass)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def weights_only_load(path: str, map_location=None):
    """``torch.load(path, weights_only=True)`` allowing only ``deepspeed_safe_globals``; a file
    that needs anything else (a crafted pickle) raises CheckpointFormatError naming it."""
    allowed = deepspeed_safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"it pickles {found[1]}" if found else str(e).splitlines()[0]
        raise CheckpointFormatError(f"{path}: refused by a weights_only load ({why}; DeepSpeed's files "
                                    f"hold tensors and {', '.join(c.__name__ for c in allowed)}); {SAFE_FORMAT_HELP}") from e


class DeepSpeedBackend:
    """A DeepSpeed engine; on CPU: ``DS_ACCELERATOR=cpu`` and gloo (set before the import)."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, config: dict, on_gpu: bool) -> None:
        if not on_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        self.module, self.forward_model = self.engine.module, self.engine
        self.zero_stage = config["zero_optimization"]["stage"]
        # DeepSpeed 0.19.8's TorchCheckpointEngine.load is torch.load(weights_only=False), and
        # engine.load_checkpoint reads every file of our checkpoints (model states, ZeRO shards)
        # through it: replaced, on this engine, by a weights_only load. Its paths that call
        # torch.load themselves (universal checkpoints, NVMe offload, ZeRO-3 without optimizer
        # states via zero_to_fp32) are off: deepspeed_config sets none, load() loads optimizers
        self.engine.checkpoint_engine.load = weights_only_load

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the caller normalises the loss

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.zero_stage < 3:
            return None
        return self.engine._zero3_consolidated_16bit_state_dict()  # collective; None off rank 0

    def save(self, state_dir: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(state_dir / "deepspeed"), tag="state", save_latest=False)

    def load(self, state_dir: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(state_dir / "deepspeed"), tag="state", load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {state_dir / 'deepspeed'}")
