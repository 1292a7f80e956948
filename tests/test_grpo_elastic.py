"""Elastic, fault-tolerant rollout workers in GRPO (real Ray, real actors, the tiny model).

A rollout worker killed with SIGKILL mid-step: its share of the step's prompts is re-issued with
the same seeds, and the run ends exactly as an undisturbed one. ``awares-rl scale`` changes the
worker count of a running job at step boundaries, through its named-actor control channel.
``grpo.async_rollout`` rolls out the next step while the learner trains (one step off-policy).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import torch
from safetensors.torch import load_file

from awares_rl.checkpoint import checkpoint_problem, latest_checkpoint, step_dir
from awares_rl.cli import main
from awares_rl.config import load_recipe
from awares_rl.grpo import GRPOTrainer
from awares_rl.rollout.control import CONTROL_FILE, request_scale, write_private
from awares_rl.rollout.pool import step_shards
from awares_rl.sampling import sampling_seed
from cluster.actor_group import init_local_ray
from tests import metrics

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"
P, G = 4, 2  # prompts a step, episodes a prompt
OVERRIDES = [
    "data.n_train=8", "data.n_val=2", "data.n_test=2", "rollout.backend=hf", f"rollout.group_size={G}",
    "rollout.max_new_tokens=12", f"grpo.prompts_per_step={P}", "grpo.lr=1e-3", "grpo.kl_coef=0",
    "grpo.save_every=0", "learner.backend=torch", "learner.use_ray=false", "logging.wandb=false",
    "grpo.dynamic_sampling=false",  # one rollout batch a step (the recipe draws up to 4): the counts below are per batch
]  # fmt: skip
ELASTIC = ("rollout/workers_lost", "rollout/reissued_prompts")  # what a kill may change


def recipe(tmp_path: Path, name: str, *extra: str):
    return load_recipe(RECIPE, [f"run.out_dir={tmp_path}", f"run.name={name}", *OVERRIDES, *extra])


def rows(cfg) -> list[dict]:
    return [json.loads(x) for x in (cfg.run.dir / "grpo" / "metrics.jsonl").read_text().splitlines()]


def stable(row: dict) -> dict:
    return metrics.stable(row, also=ELASTIC)


@pytest.fixture(autouse=True)
def root_logging():
    """Put back the root logger that ``main()`` (setup_logging) replaces, with a handler on
    capsys's stream that is closed after the test."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's runs (short temp dir, room for 3 rollout workers). Retried:
    on a loaded machine the raylet can miss Ray's fixed 15-30 s start-up deadlines."""
    tmp = tempfile.mkdtemp(prefix="rel", dir="/tmp")
    init_local_ray(tries=10, num_cpus=6, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def fit(cfg, start_model: Path, beside=None) -> GRPOTrainer:
    """``GRPOTrainer.fit`` (on the module's Ray: its actors end with it), with ``beside(trainer)``
    in a thread meanwhile; that thread's exception, if any, is raised here."""
    trainer, errors = GRPOTrainer(cfg, start_model=start_model), []

    def guarded():
        try:
            beside(trainer)
        except BaseException as e:  # noqa: B036 (re-raised in the test's thread)
            errors.append(e)

    thread = threading.Thread(target=guarded, daemon=True) if beside else None
    if thread:
        thread.start()
    trainer.fit()
    if thread:
        thread.join(120)
    if errors:
        raise errors[0]
    return trainer


def wait_for(cond, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_scale_bad_input(tmp_path, capsys):
    def scale(run_dir, n=2) -> str:
        assert main(["scale", str(run_dir), "--rollout-workers", str(n)]) == 1
        return capsys.readouterr().err

    assert "no such run directory" in scale(tmp_path / "nope")
    assert "--rollout-workers must be >= 1, got 0" in scale(tmp_path, 0)
    assert "no live GRPO job" in scale(tmp_path) and "start the run first" in scale(tmp_path)
    control = tmp_path / "grpo" / CONTROL_FILE
    control.parent.mkdir()
    write_private(control, json.dumps({"address": "127.0.0.1:1", "namespace": "awares-rl", "actor": "scale-x"}))
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    assert "is not running" in scale(tmp_path) and "does not answer" in scale(tmp_path)  # a killed run's file
    control.chmod(0o644)
    assert "not private to you" in scale(tmp_path)


@pytest.mark.slow
def test_killed_rollout_worker_matches_undisturbed_run(tmp_path, tool_model_dir, local_ray):
    steps, killed_at = 3, 1  # SIGKILL worker 1 while step index 1 (logged as step 2) rolls out
    straight = recipe(tmp_path, "straight", "rollout.num_workers=2", f"grpo.steps={steps}")
    killed = recipe(tmp_path, "killed", "rollout.num_workers=2", f"grpo.steps={steps}")
    victim: list[int] = []

    def kill_mid_step(trainer):
        wait_for(lambda: getattr(trainer, "pool", None) is not None, "the rollout pool")
        pid = trainer.pool.pids()[1]
        wait_for(lambda: trainer.pool.rolling_step == killed_at, f"step {killed_at}'s rollouts")
        os.kill(pid, signal.SIGKILL)
        victim.append(pid)

    fit(straight, tool_model_dir)
    fit(killed, tool_model_dir, beside=kill_mid_step)
    assert victim, "the worker was never killed"
    want, got = rows(straight), rows(killed)
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert all(r["rollout/episodes"] == P * G and r["rollout/num_workers"] == 2 for r in got)
    assert [r["rollout/workers_lost"] for r in got] == [0, 1, 0]
    assert [r["rollout/reissued_prompts"] for r in got] == [0, P // 2, 0]  # the victim's whole shard
    assert all(r["rollout/workers_lost"] == 0 for r in want)
    assert [stable(r) for r in got] == [stable(r) for r in want]  # same episodes, same updates
    assert got[-1]["rollout/policy_version"] == steps - 1  # the restarted worker got the weights


@pytest.mark.slow
def test_scale_one_two_one_through_the_control_channel(tmp_path, tool_model_dir, local_ray):
    # 24 short steps: time for `awares-rl scale` to start as a process of its own and connect
    cfg = recipe(tmp_path, "scaled", "rollout.num_workers=1", "grpo.steps=24")
    applied: list[dict] = []

    def scale_up_then_down(trainer):
        control = cfg.run.dir / "grpo" / CONTROL_FILE
        wait_for(lambda: (cfg.run.dir / "grpo" / "metrics.jsonl").is_file(), "step 1's metrics")
        assert stat.S_IMODE(control.stat().st_mode) == 0o600
        # the CLI in a process of its own (as a user runs it): it reads the 0600 file and calls the
        # run's named actor in the run's Ray cluster
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        cli = subprocess.run([sys.executable, "-m", "awares_rl.cli", "scale", str(cfg.run.dir), "--rollout-workers",
                              "2", "--wait-s", "300"], capture_output=True, text=True, timeout=300, env=env)
        assert cli.returncode == 0, cli.stderr[-3000:]
        said = re.search(r"2 rollout workers from GRPO step (\d+) on", cli.stdout)
        assert said, cli.stdout
        applied.append({"workers": 2, "step": int(said[1])})
        applied.append(request_scale(cfg.run.dir, 1, wait_s=300))  # the Python API

    fit(cfg, tool_model_dir, beside=scale_up_then_down)
    got = rows(cfg)
    counts = [r["rollout/num_workers"] for r in got]
    print("workers per step:", counts, applied)
    assert len(applied) == 2, "the run ended before both requests were applied"
    assert all(r["rollout/episodes"] == P * G for r in got)
    up, down = applied[0]["step"], applied[1]["step"]  # the first logged steps with 2, then 1 again
    assert 1 < up < down <= len(counts)
    assert counts == [1] * (up - 1) + [2] * (down - up) + [1] * (len(counts) - down + 1)
    assert not (cfg.run.dir / "grpo" / CONTROL_FILE).exists()  # gone with the run


@pytest.mark.slow
def test_async_rollout_runs_one_step_off_policy_and_resumes_exactly(tmp_path, tool_model_dir, local_ray):
    """grpo.async_rollout: step t+1's episodes come from the weights step t started from (lag 1,
    the importance weight sees the gap), except after a checkpoint, which drains the pipeline;
    a run resumed from that checkpoint repeats the uninterrupted one exactly."""
    extra = ("grpo.steps=4", "grpo.save_every=2", "grpo.async_rollout=true")
    straight = recipe(tmp_path, "straight", *extra)
    fit(straight, tool_model_dir)
    want = rows(straight)
    assert [r["step"] for r in want] == [1, 2, 3, 4]
    assert [r["train/policy_lag"] for r in want] == [0, 1, 0, 1]  # step 3 follows the checkpoint
    assert [r["rollout/policy_version"] for r in want] == [0, 0, 2, 2]
    assert all(r["rollout/episodes"] == P * G for r in want)
    for before, r in zip(want, want[1:]):
        if r["train/policy_lag"] == 0:  # sampled by the weights the learner holds
            assert r["learner/rollout_kl"] == pytest.approx(0.0, abs=1e-5)
        elif before["learner/grad_norm"] > 0:  # sampled one update ago: the engine's logprobs differ
            assert r["learner/rollout_kl"] > 0 and r["learner/tis_weight_mean"] != pytest.approx(1.0, abs=1e-7)
    assert "time/rollout_wait_s" in want[0] and "time/rollout_wait_s" not in want[1]  # no run-ahead at a checkpoint

    resumed = recipe(tmp_path, "resumed", *extra)  # the straight run's checkpoint at step 2, models removed
    shutil.copytree(straight.run.dir, resumed.run.dir)
    shutil.rmtree(resumed.run.dir / "models" / "grpo")
    ckpts = resumed.run.dir / "checkpoints" / "grpo"
    assert sorted(ckpts.iterdir()) == [step_dir(ckpts, 2)]
    fit(resumed, tool_model_dir)
    got = rows(resumed)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [stable(r) for r in got] == [stable(r) for r in want]
    a = load_file(str(straight.run.dir / "models" / "grpo" / "model.safetensors"))
    b = load_file(str(resumed.run.dir / "models" / "grpo" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ray_processes(actor: str) -> list[int]:
    """Pids of this machine's ``ray::<actor>`` processes (the module's Ray is the only one)."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(f"ray::{actor}")]


@pytest.mark.slow
def test_a_dead_learner_ends_the_run_naming_the_newest_checkpoint(tmp_path, tool_model_dir, local_ray):
    cfg = recipe(tmp_path, "learner", "learner.use_ray=true", "grpo.steps=30", "grpo.save_every=1")
    ckpts = cfg.run.dir / "checkpoints" / "grpo"

    def kill_learner(trainer):
        wait_for(lambda: latest_checkpoint(ckpts) is not None, "the first checkpoint")
        pids = ray_processes("LearnerWorker")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)

    with pytest.raises(RuntimeError, match="a learner actor died") as err:
        fit(cfg, tool_model_dir, beside=kill_learner)
    newest = latest_checkpoint(ckpts)
    said = str(err.value)
    assert f"the newest checkpoint is {newest}" in said and "Run the same command again to resume" in said
    assert checkpoint_problem(newest) is None  # intact: resume can use it
    wait_for(lambda: not ray_processes("RolloutWorker"), "the run's rollout worker to end with it", 60)


def test_step_shards_keep_the_seed_of_their_offset():
    shards = step_shards(list(range(10)), 3, run_seed=5, step=2, group_size=4)
    assert [(s.offset, s.samples) for s in shards] == [(0, [0, 1, 2, 3]), (4, [4, 5, 6]), (7, [7, 8, 9])]
    assert [s.seed for s in shards] == [sampling_seed(5, 2, 4 * s.offset) for s in shards]
    assert len(step_shards([0, 1], 4, 0, 0, 2)) == 2  # never an empty shard
