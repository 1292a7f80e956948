"""Resume unpickles nothing from a run directory: a crafted pickle planted in place of any
trainer_state file (RNG, LR scheduler, optimizer, DeepSpeed's model states and ZeRO shards) is
refused with an error naming the file, and its code never runs; checkpoints of the old pickle
format are refused, not read."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from awares_rl import checkpoint as ckpt
from awares_rl.checkpoint import CheckpointFormatError, TrainerState
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from tests.test_learner import ray_cluster, sequences  # noqa: F401  (ray_cluster: a fixture)

OPTIM = OptimSettings(lr=1e-3, total_steps=4, warmup_steps=1)


class Plant:
    """Unpickling this creates ``marker``: code that a trusting loader would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path) -> None:
    """Overwrite ``path`` with a torch.save'd (zip + pickle) Plant."""
    path.unlink(missing_ok=True)
    torch.save(Plant(marker), path)


def test_the_plant_runs_code_when_unpickled(tmp_path):
    """The payload is live: an unsafe load (what resume used to do) creates the marker."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False).close()
    assert marker.exists()


@pytest.fixture(scope="module")
def torch_checkpoint(tiny_dir, tmp_path_factory):
    """(worker, checkpoint dir) of the torch backend after one SFT step."""
    worker = LearnerWorker(str(tiny_dir), LearnerConfig(backend="torch", micro_batch_size=2), OPTIM)
    worker.sft_step(sequences(worker.processor, 2))
    out = tmp_path_factory.mktemp("torch_ckpt") / "c"
    worker.save(str(out), TrainerState(step=1))
    return worker, out


def planted_copy(good, tmp_path, name: str):
    """(a copy of checkpoint ``good`` with a crafted pickle as trainer_state/``name``, its marker)."""
    bad, marker = tmp_path / "c", tmp_path / "pwned"
    shutil.copytree(good, bad)
    plant(ckpt.state_dir(bad) / name, marker)
    return bad, marker


def test_trainer_state_layout(torch_checkpoint):
    _, out = torch_checkpoint
    assert sorted(p.name for p in ckpt.state_dir(out).iterdir()) == [
        "optimizer.safetensors", "rng_rank0.safetensors", "scheduler.json", "state.json"]


@pytest.mark.parametrize("name", ["rng_rank0.safetensors", "scheduler.json", "optimizer.safetensors"])
def test_planted_pickle_is_refused(torch_checkpoint, tmp_path, name):
    worker, good = torch_checkpoint
    bad, marker = planted_copy(good, tmp_path, name)
    with pytest.raises(CheckpointFormatError, match=re.escape(str(ckpt.state_dir(bad) / name))):
        worker.load_state(str(bad))
    assert not marker.exists()
    worker.load_state(str(good))  # the untouched checkpoint still loads


@pytest.mark.parametrize("name", ["rng_rank0.pt", "scheduler.pt", "optimizer.pt"])
def test_old_pickle_format_is_refused(torch_checkpoint, tmp_path, name):
    """A checkpoint of the old code (``*.pt`` pickles in trainer_state/) is refused unread."""
    worker, good = torch_checkpoint
    old, marker = planted_copy(good, tmp_path, name)
    with pytest.raises(CheckpointFormatError, match=re.escape(name) + ".*predates the safe"):
        worker.load_state(str(old))
    assert not marker.exists()


def test_deepspeed_files_load_weights_only(ray_cluster, tiny_dir, tmp_path):  # noqa: F811
    """A real ZeRO-2 checkpoint loads with the allow-list; a plant in any of its files is refused."""
    from cluster.actor_group import ActorGroup

    group = ActorGroup(LearnerWorker, 1, str(tiny_dir), LearnerConfig(zero_stage=2, micro_batch_size=2), OPTIM)
    group.call_split("sft_step", sequences(load_processor(tiny_dir), 2))
    good = tmp_path / "good"
    group.call("save", str(good), TrainerState(step=1))
    assert group.call("load_state", str(good))[0].step == 1
    shards = sorted((ckpt.state_dir(good) / "deepspeed").rglob("*.pt"))
    assert {p.name for p in shards} == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    for i, shard in enumerate(shards):
        bad, marker = tmp_path / f"bad{i}", tmp_path / f"pwned{i}"
        shutil.copytree(good, bad)
        target = bad / shard.relative_to(good)
        plant(target, marker)
        with pytest.raises(CheckpointFormatError, match=re.escape(str(target))):
            group.call("load_state", str(bad))
        assert not marker.exists()
    group.shutdown()
