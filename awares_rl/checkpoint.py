"""Checkpoints: a model directory that transformers and vLLM load as-is, plus ``trainer_state/``
for an exact resume.

    <dir>/model.safetensors, config.json, generation_config.json   (save_pretrained)
    <dir>/tokenizer*, preprocessor_config.json, chat_template*      (the processor)
    <dir>/trainer_state/state.json        step, policy version, data position, extra; written
                                          LAST, so its presence marks a complete checkpoint
    <dir>/trainer_state/scheduler.json    the LR scheduler's state_dict
    <dir>/trainer_state/rng_rank<r>.safetensors  each worker's RNG: torch (+ cuda.<i>) tensors;
                                          python and numpy states as JSON in the header
    <dir>/trainer_state/optimizer.safetensors    torch backend: AdamW tensors state.<param>.<name>;
                                          param_groups and non-tensor state as JSON in the header
    <dir>/trainer_state/deepspeed/        DeepSpeed backend: engine.save_checkpoint (ZeRO
                                          partitions, fp32 master weights), read weights_only

Resume starts by itself, so nothing in a run directory is unpickled: our own state is safetensors
+ JSON, and DeepSpeed's files go through ``torch.load(weights_only=True)`` (``backends.py``).
A file that does not parse, or a ``*.pt`` pickle of the old format, raises CheckpointFormatError.

Checkpoints of a stage live in ``<run dir>/checkpoints/<stage>/step_<N>``; the final model of a
stage goes to ``RunPaths.model(stage)``. Writers on several nodes need a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_DIR = "trainer_state"
STATE_FILE = "state.json"
SAFE_FORMAT_HELP = "delete the checkpoint (or the run directory) to start fresh"


class CheckpointFormatError(ValueError):
    """A trainer_state file resume refuses: not valid safetensors/JSON, or a pickle."""


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
    """The TrainerState of a complete checkpoint; CheckpointFormatError if ``state.json`` does
    not parse (e.g. cut short by a full disk), FileNotFoundError if it is missing."""
    path = state_dir(ckpt) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint ({path} is missing)")
    data = read_json(path)
    try:
        state = TrainerState(**data)
    except TypeError as e:
        raise CheckpointFormatError(f"{path}: not a trainer state ({e}); {SAFE_FORMAT_HELP}") from e
    if not all(isinstance(v, int) and v >= 0 for v in (state.step, state.policy_version, state.samples_seen)):
        raise CheckpointFormatError(f"{path}: step, policy_version and samples_seen must be counts; {SAFE_FORMAT_HELP}")
    return state


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why resume cannot use ``ckpt`` (no or a broken ``state.json``, another trainer-state JSON
    that does not parse, a truncated or unreadable ``*.safetensors`` or DeepSpeed ``*.pt``), or
    None. Reads headers only: safetensors checks that the file covers every tensor its header
    lists; a DeepSpeed file (torch's zip format) must have its zip directory, which truncation
    loses. Nothing is unpickled here."""
    import zipfile

    from safetensors import safe_open

    try:
        read_state(ckpt)
        for f in sorted(state_dir(ckpt).glob("*.json")):
            read_json(f)
    except (FileNotFoundError, CheckpointFormatError) as e:
        return str(e)
    files = sorted(Path(ckpt).glob("*.safetensors")) + sorted(state_dir(ckpt).glob("*.safetensors"))
    if not any(f.parent == Path(ckpt) for f in files):
        return f"{ckpt}: no model *.safetensors"
    for f in files:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            return f"{f}: unreadable ({e})"
    for f in sorted((state_dir(ckpt) / "deepspeed").rglob("*.pt")):
        try:
            zipfile.ZipFile(f).close()
        except (zipfile.BadZipFile, OSError) as e:
            return f"{f}: truncated or not a torch checkpoint ({e})"
    return None


def refuse_legacy_state(ckpt: str | Path) -> None:
    """Raise CheckpointFormatError if ``trainer_state/`` holds ``*.pt`` pickles (the old format)."""
    legacy = sorted(state_dir(ckpt).glob("*.pt"))
    if legacy:
        raise CheckpointFormatError(
            f"{legacy[0]}: this checkpoint predates the safe trainer_state format (safetensors + "
            f"JSON) and holds pickles, which resume never loads; {SAFE_FORMAT_HELP}")


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], data: Any) -> None:
    """``tensors`` (CPU copies) to a safetensors file, ``data`` as JSON in its header metadata."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"json": json.dumps(data)})


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, data) that ``save_safetensors`` wrote; CheckpointFormatError if it does not parse."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["json"])
    except Exception as e:  # safetensors raises its own error types; nothing here runs code
        raise CheckpointFormatError(f"{path} is not a safetensors file with a JSON header ({e}); "
                                    f"{SAFE_FORMAT_HELP}") from e


def read_json(path: str | Path, keys: Collection[str] | None = None) -> Any:
    """A JSON file of a checkpoint; with ``keys``, a dict that must have exactly those keys."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint is incomplete")
    try:
        data = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path} is not JSON ({e}); {SAFE_FORMAT_HELP}") from e
    if keys is not None and (not isinstance(data, dict) or set(data) != set(keys)):
        raise CheckpointFormatError(f"{path}: expected a JSON object with keys {sorted(keys)}; {SAFE_FORMAT_HELP}")
    return data


def rng_file(ckpt: str | Path, rank: int) -> Path:
    return state_dir(ckpt) / f"rng_rank{rank}.safetensors"


def save_rng(ckpt: str | Path, rank: int) -> None:
    """The calling process's python, numpy and torch (and CUDA) RNG states."""
    state_dir(ckpt).mkdir(parents=True, exist_ok=True)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    numpy_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    save_safetensors(rng_file(ckpt, rank), tensors, {"python": random.getstate(), "numpy": numpy_state})


def load_rng(ckpt: str | Path, rank: int) -> None:
    """Restore the RNG states ``save_rng`` wrote for ``rank``."""
    path = rng_file(ckpt, rank)
    tensors, data = load_safetensors(path)
    try:
        version, internal, gauss = data["python"]  # random.getstate(): (3, 625 ints, None)
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(data["numpy"])
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointFormatError(f"{path}: not an RNG state ({e!r}); {SAFE_FORMAT_HELP}") from e
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """A torch optimizer's state_dict: tensors as ``state.<param index>.<name>``, the rest JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, param_state in sd["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    save_safetensors(path, tensors, {"param_groups": sd["param_groups"], "state": scalars})


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore what ``save_optimizer`` wrote into ``optimizer`` (built over the same parameters)."""
    tensors, data = load_safetensors(path)
    try:
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in data["state"].items()}
        for key, tensor in tensors.items():
            prefix, idx, name = key.split(".", 2)
            if prefix != "state":
                raise ValueError(f"unexpected tensor {key!r}")
            state.setdefault(int(idx), {})[name] = tensor
        # JSON turned tuples (AdamW's betas) into lists: the live optimizer's groups say which
        groups = [{k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in group.items()}
                  for group, live in zip(data["param_groups"], optimizer.param_groups)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointFormatError(f"{path}: not this optimizer's state ({e!r}); {SAFE_FORMAT_HELP}") from e


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


def safetensors_files(ckpt: str | Path) -> list[Path]:
    """The model directory's safetensors files (one, or the shards), sorted."""
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {ckpt}: not a saved model directory")
    return files


def checkpoint_tensors(ckpt: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of the model directory's safetensors, one file (or shard) at a time."""
    from safetensors.torch import load_file

    for f in safetensors_files(ckpt):
        yield from load_file(str(f)).items()


@torch.no_grad()
def load_model_weights(model, ckpt: str | Path) -> None:
    """Copy the checkpoint's safetensors (one file or shards) into ``model``'s parameters."""
    params = dict(model.named_parameters())
    by_ckpt_name = checkpoint_to_module_names(model)
    for name, tensor in checkpoint_tensors(ckpt):
        if name not in by_ckpt_name:
            raise KeyError(f"{ckpt}: tensor {name!r} matches no parameter of the model")
        params[by_ckpt_name[name]].copy_(tensor)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def _step_of(path: Path) -> int | None:
    suffix = path.name.split("_", 1)[1] if "_" in path.name else ""
    return int(suffix) if suffix.isascii() and suffix.isdigit() else None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest ``step_*`` checkpoint under ``root`` that resume can read, if any; each newer
    one that it cannot (incomplete, truncated, unreadable) is skipped with a warning naming it."""
    steps = [p for p in Path(root).glob("step_*") if p.is_dir() and _step_of(p) is not None]
    for ckpt in sorted(steps, key=_step_of, reverse=True):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        log.warning("skipping checkpoint %s: %s", ckpt, problem)
    return None


def refuse_fresh_start(metrics: str | Path, ckpt_root: str | Path, stage: str) -> None:
    """ConfigError if a run about to start from step 0 would log over the steps an earlier run
    logged to ``metrics`` (no checkpoint under ``ckpt_root`` that resume can read): a run never
    silently restarts and rewrites its history."""
    from awares_rl.core.config_io import ConfigError

    metrics = Path(metrics)
    rows = metrics.read_text(errors="replace").count("\n") if metrics.is_file() else 0
    if rows:
        raise ConfigError(
            f"{metrics} holds {rows} logged rows of an earlier {stage} run, but {ckpt_root} has no "
            f"checkpoint resume can read (see the warnings above), so this run would restart from step 0 "
            f"over them. To start fresh, delete {metrics.parent} (or set run.name to a new run); to keep "
            f"going, restore a complete checkpoint (set {stage}.save_every > 0 so runs leave some)")


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest readable checkpoints (and any unreadable older ones):
    a truncated newest one never costs the last good one."""
    steps = sorted((p for p in Path(root).glob("step_*") if p.is_dir() and _step_of(p) is not None), key=_step_of)
    complete = [p for p in steps if checkpoint_problem(p) is None]
    kept = set(complete[-keep:]) if keep > 0 else set()
    newest = _step_of(complete[-1]) if complete else -1
    removed = [p for p in steps if p not in kept and _step_of(p) <= newest]
    for p in removed:
        shutil.rmtree(p)
    return removed
