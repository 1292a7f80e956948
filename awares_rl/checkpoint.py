"""Checkpoints: a model directory that transformers and vLLM load as-is, plus ``trainer_state/``
for an exact resume.

    <dir>/model.safetensors, config.json, generation_config.json   (save_pretrained)
    <dir>/tokenizer*, preprocessor_config.json, chat_template*      (the processor)
    <dir>/trainer_state/state.json        step, policy version, data position, extra; written
                                          LAST, so its presence marks a complete checkpoint
    <dir>/trainer_state/rng_rank<r>.pt    python / numpy / torch RNG of each worker
    <dir>/trainer_state/optim.pt          torch backend: optimizer + LR scheduler
    <dir>/trainer_state/deepspeed/        DeepSpeed backend: engine.save_checkpoint (ZeRO
                                          partitions, fp32 master weights) + scheduler.pt

Checkpoints of a stage live in ``<run dir>/checkpoints/<stage>/step_<N>``; the final model of a
stage goes to ``RunPaths.model(stage)``. Writers on several nodes need a shared filesystem.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_DIR = "trainer_state"
STATE_FILE = "state.json"


@dataclass
class TrainerState:
    """Where training stands: enough, with the model and optimizer, to continue exactly."""

    step: int = 0  # optimizer steps done
    policy_version: int = 0  # version of the weights (rollout engines tag episodes with it)
    samples_seen: int = 0  # data position: samples consumed since the start (all epochs)
    extra: dict[str, Any] = field(default_factory=dict)  # the stage's own bookkeeping (JSON)


def state_dir(ckpt: str | Path) -> Path:
    return Path(ckpt) / STATE_DIR


def is_complete(ckpt: str | Path) -> bool:
    return (state_dir(ckpt) / STATE_FILE).is_file()


def write_state(ckpt: str | Path, state: TrainerState) -> None:
    """Write ``state.json`` atomically (the completion marker: call it last, on one rank)."""
    path = state_dir(ckpt) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(path)


def mark_incomplete(ckpt: str | Path) -> None:
    """Remove the completion marker before (over)writing a checkpoint."""
    (state_dir(ckpt) / STATE_FILE).unlink(missing_ok=True)


def read_state(ckpt: str | Path) -> TrainerState:
    path = state_dir(ckpt) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint ({path} is missing)")
    return TrainerState(**json.loads(path.read_text()))


def save_rng(ckpt: str | Path, rank: int) -> None:
    """The calling process's python, numpy and torch RNG states."""
    d = state_dir(ckpt)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               d / f"rng_rank{rank}.pt")


def load_rng(ckpt: str | Path, rank: int) -> None:
    """Restore the RNG states ``save_rng`` wrote for ``rank``."""
    rng = torch.load(state_dir(ckpt) / f"rng_rank{rank}.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_model_dir(ckpt: str | Path, model, processor, state_dict: dict | None = None) -> None:
    """The transformers/vLLM-loadable part: safetensors + config (+ processor).

    ``state_dict`` (module names, full tensors) is for sharded models (ZeRO-3) whose parameters
    the caller gathered; by default the model's own parameters are saved.
    """
    Path(ckpt).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(ckpt, state_dict=state_dict, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(ckpt)


def checkpoint_names(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module parameter names -> the names ``save_pretrained`` writes (transformers 5 renames
    e.g. ``model.language_model.layers.*`` -> ``model.layers.*``, ``model.visual.*`` -> ``visual.*``)."""
    from transformers.core_model_loading import revert_weight_conversion

    return dict(revert_weight_conversion(model, dict(tensors)))


def checkpoint_to_module_names(model) -> dict[str, str]:
    """{checkpoint name: module parameter name} (the inverse of ``checkpoint_names``)."""
    params = dict(model.named_parameters())
    module_name = {id(p): n for n, p in params.items()}
    return {c: module_name[id(p)] for c, p in checkpoint_names(model, params).items()}


@torch.no_grad()
def load_model_weights(model, ckpt: str | Path) -> None:
    """Copy the checkpoint's safetensors (one file or shards) into ``model``'s parameters."""
    from safetensors.torch import load_file

    params = dict(model.named_parameters())
    by_ckpt_name = checkpoint_to_module_names(model)
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {ckpt}")
    for f in files:
        for name, tensor in load_file(str(f)).items():
            if name not in by_ckpt_name:
                raise KeyError(f"{f}: tensor {name!r} matches no parameter of the model")
            params[by_ckpt_name[name]].copy_(tensor)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete ``step_*`` checkpoint under ``root`` with the highest step, if any."""
    done = [p for p in Path(root).glob("step_*") if p.is_dir() and is_complete(p)]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints (and any incomplete older ones)."""
    steps = sorted((p for p in Path(root).glob("step_*") if p.is_dir()),
                   key=lambda p: int(p.name.split("_")[1]))
    complete = [p for p in steps if is_complete(p)]
    kept = set(complete[-keep:]) if keep > 0 else set()
    newest = int(complete[-1].name.split("_")[1]) if complete else -1
    removed = [p for p in steps if p not in kept and int(p.name.split("_")[1]) <= newest]
    for p in removed:
        shutil.rmtree(p)
    return removed
