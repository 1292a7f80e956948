"""GRPO killed with SIGKILL between checkpoints and resumed reaches the same metrics and weights
as an uninterrupted run (CPU, fixed seed), and the kill leaves no process of its Ray cluster.

Each run is ``awares-rl grpo`` in its own session (process group), with its own Ray temp dir (so
it never joins another local cluster) and an environment marker that every descendant inherits:
the processes of one run are found by that marker, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from awares_rl.checkpoint import latest_checkpoint
from awares_rl.tracking import truncate_metrics
from cluster.actor_group import reap_group_on_exit
from tests.metrics import stable

RECIPE = str(Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml")
STEPS = 4
# One checkpoint, at step 2: step 3 is logged, then the run goes on for a step uncheckpointed.
OVERRIDES = [
    "data.n_train=8", "rollout.group_size=4", "rollout.max_new_tokens=16", f"grpo.steps={STEPS}",
    "grpo.prompts_per_step=2", "grpo.lr=1e-3", "grpo.save_every=2", "learner.backend=deepspeed",
    "logging.wandb=false", "grpo.mini_batches=2", "grpo.ppo_epochs=2",  # seeded split, 4 optimizer steps a step
]  # fmt: skip
MARKER = "AWARES_TEST_RUN"


def marked_pids(tag: str) -> list[int]:
    """Processes (of any name) whose environment holds ``MARKER=tag``."""
    needle, pids = f"{MARKER}={tag}".encode() + b"\0", []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


class GRPORun:
    """``awares-rl grpo`` on a run dir seeded with the start model, in its own session."""

    def __init__(self, out_dir: Path, name: str, start_model: Path) -> None:
        self.dir, self.tag = out_dir / name, uuid.uuid4().hex
        shutil.copytree(start_model, self.dir / "models" / "sft")
        self.ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths
        self.cmd = [sys.executable, "-m", "awares_rl.cli", "grpo", "--recipe", RECIPE,
                    f"run.out_dir={out_dir}", f"run.name={name}", *OVERRIDES]
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update({MARKER: self.tag, "RAY_TMPDIR": self.ray_tmp, "PYTHONUNBUFFERED": "1"})
        self.proc: subprocess.Popen | None = None
        self.attempt = 0

    def start(self) -> None:
        self.attempt += 1
        with open(self.dir / f"attempt{self.attempt}.log", "w") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float = 600) -> None:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        assert rc == 0, self.log_tail()
        self.assert_no_processes_left()

    def kill(self) -> None:
        """SIGKILL the run's whole session."""
        assert self.proc is not None and self.proc.poll() is None, "the run ended before the kill"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.assert_no_processes_left()

    def assert_no_processes_left(self, grace_s: float = 20.0) -> None:
        """Every process of the run is gone within ``grace_s`` (stragglers are killed, and fail)."""
        deadline = time.monotonic() + grace_s
        while (left := marked_pids(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of the run outlived it: {left}"

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in marked_pids(self.tag):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def log(self) -> str:
        return (self.dir / f"attempt{self.attempt}.log").read_text()

    def log_tail(self) -> str:
        return self.log()[-4000:]

    def checkpoint_step(self) -> int:
        ckpt = latest_checkpoint(self.dir / "checkpoints" / "grpo")
        return int(ckpt.name.split("_")[1]) if ckpt else 0

    def logged_steps(self) -> int:
        """Complete lines in metrics.jsonl (the file may be half-way through a write)."""
        path = self.dir / "grpo" / "metrics.jsonl"
        return path.read_text().count("\n") if path.is_file() else 0

    def rows(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "grpo" / "metrics.jsonl").read_text().splitlines()]

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.dir / "models" / "grpo" / "model.safetensors"))


def test_truncate_metrics_drops_rows_after_the_checkpoint(tmp_path):
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in (1, 2, 3)] + ['{"step": 4, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))  # the last line cut by a kill
    assert truncate_metrics(tmp_path, 2) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert truncate_metrics(tmp_path, 2) == 0 and truncate_metrics(tmp_path / "none", 0) == 0


def alive(pid: int) -> bool:
    try:  # a killed orphan may stay a zombie ("Z") until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


def test_reaper_kills_what_a_killed_actor_spawned(monkeypatch):
    monkeypatch.delenv("RAY_RAYLET_PID", raising=False)
    assert reap_group_on_exit() is None  # not in a Ray actor: never touch this process's group
    actor_code = (
        "import subprocess, time\n"
        "from cluster.actor_group import reap_group_on_exit\n"
        "assert reap_group_on_exit() is not None\n"
        "print(subprocess.Popen(['sleep', '600']).pid, flush=True)\n"
        "time.sleep(600)\n"
    )  # a stand-in Ray actor: leads its own process group, RAY_RAYLET_PID set
    actor = subprocess.Popen([sys.executable, "-c", actor_code], env={**os.environ, "RAY_RAYLET_PID": "1"},
                             stdout=subprocess.PIPE, start_new_session=True)
    with actor.stdout:
        child = int(actor.stdout.readline())
    os.kill(actor.pid, signal.SIGKILL)
    actor.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the killed actor's child outlived it")


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, tool_model_dir):
    straight = GRPORun(tmp_path, "straight", tool_model_dir)
    killed = GRPORun(tmp_path, "killed", tool_model_dir)
    try:
        straight.start()
        straight.wait()
        killed.start()
        # kill once a step after the checkpoint has been logged: the resumed run must continue
        # from the checkpoint, drop that step's row and log it again
        deadline = time.monotonic() + 600
        while not 1 <= killed.checkpoint_step() < killed.logged_steps():
            assert killed.proc.poll() is None, killed.log_tail()
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        killed.kill()
        resumed_from, logged = killed.checkpoint_step(), killed.logged_steps()
        assert resumed_from == 2 < logged
        killed.start()
        killed.wait()
    finally:
        straight.cleanup()
        killed.cleanup()

    print(f"killed with {logged} steps logged; resumed from checkpoint {resumed_from}")
    assert f"resuming from step {resumed_from} " in killed.log()
    want, got = straight.rows(), killed.rows()
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # no step logged twice
    assert [stable(r) for r in got] == [stable(r) for r in want]
    a, b = straight.weights(), killed.weights()
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff == 0.0, f"final weights differ by up to {diff:g}"
    start = load_file(str(tool_model_dir / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)  # and training did move them
