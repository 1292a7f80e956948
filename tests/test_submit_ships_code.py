"""`awares-rl submit` ships the code: a real Ray head (token auth on) whose Python has every
dependency but not awares-rl runs recipes/smoke.yaml, the whole pipeline, to SUCCEEDED and writes
its results.json; `awares-rl job status|logs|wait|stop` work on such jobs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from awares_rl.config import load_recipe
from cluster.resources import recipe_resources
from tests.ray_head import start_head, stop_head

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _bare_env(home: Path, venv: Path) -> dict[str, str]:
    """The head's environment: the bare venv first on PATH, nothing that could import this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "HOME": str(home), "PATH": f"{venv / 'bin'}:{env['PATH']}", "HF_HUB_OFFLINE": "1"}


def _bare_python(root: Path) -> Path:
    """A venv of this interpreter whose site-packages names ours in a plain ``.pth`` line: every
    dependency imports, but an editable install's ``__editable__*.pth`` hook is not run, so
    ``import awares_rl`` fails unless the job ships the code. Skips where that cannot be built."""
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv from {sys.executable}: {made.stderr[-300:]}")
    py = venv / "bin" / "python"
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True, timeout=60).strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site, "deps.pth").write_text("".join(f"{d}\n" for d in ours))
    env = _bare_env(root, venv)
    deps = subprocess.run([py, "-c", "import ray, torch, transformers"], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)
    if deps.returncode != 0:
        pytest.skip(f"the dependencies do not import through a .pth line: {deps.stderr[-300:]}")
    own = subprocess.run([py, "-c", "import awares_rl"], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    if own.returncode == 0:
        pytest.skip("awares_rl is installed into site-packages itself (not editable): a bare interpreter "
                    "would import it without the shipped code, so this test could not tell")
    assert "No module named 'awares_rl'" in own.stderr, own.stderr[-1000:]
    return py


@pytest.fixture(scope="module")
def bare_head():
    """(dashboard address, token file, scratch dir) of a head started by the bare Python."""
    tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        py = _bare_python(tmp)
        # what the smoke run holds at its peak: the driver's CPU + GRPO's learner, reference,
        # rollout and reward actors (logical CPUs; the 2 cores take turns)
        cpus = math.ceil(recipe_resources(load_recipe(str(ROOT / "recipes/smoke.yaml"))).peak("cpus"))
        yield start_head(py, tmp, _bare_env(tmp, py.parent.parent), num_cpus=cpus), tmp / ".ray" / "auth_token", tmp
    finally:
        stop_head(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _cli(address: str, token: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [sys.executable, "-m", "awares_rl.cli", *args]
    if args[0] in ("submit", "job"):
        cmd += ["--address", address]
    return subprocess.run(cmd, env={**env, "RAY_AUTH_TOKEN_PATH": str(token)}, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_recipe_runs_from_shipped_code(bare_head):
    address, token, tmp = bare_head
    t0 = time.monotonic()
    out = _cli(address, token, "submit", "--recipe", "recipes/smoke.yaml", "--wait", "--timeout", "420",
               f"run.out_dir={tmp}/runs", timeout=480)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    job_id = out.stdout.splitlines()[0].strip()
    results = json.loads((tmp / "runs" / "smoke" / "results.json").read_text())
    assert {"low_res", "full_res", "sft", "grpo"} <= set(results)
    assert 0 <= results["grpo"]["accuracy"] <= 100
    print(f"smoke job {job_id}: {took:.0f} s submit-to-SUCCEEDED; stages {results['stage_seconds']}")
    assert _cli(address, token, "job", "status", job_id).stdout.strip() == "SUCCEEDED"
    assert "results written to" in _cli(address, token, "job", "logs", job_id).stdout


def test_job_stop_ends_a_running_job(bare_head):
    address, token, tmp = bare_head
    out = _cli(address, token, "submit", "--recipe", "recipes/smoke.yaml", f"run.out_dir={tmp}/stopped")
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = out.stdout.strip()
    deadline = time.monotonic() + 120
    while (now := _cli(address, token, "job", "status", job_id).stdout.strip()) != "RUNNING":
        assert now == "PENDING" and time.monotonic() < deadline, f"job {job_id} {now}, waiting for RUNNING"
    stopped = _cli(address, token, "job", "stop", job_id, "--timeout", "120", timeout=180)
    assert stopped.stdout.strip().splitlines()[-1] == "STOPPED", stopped.stdout + stopped.stderr[-2000:]
    assert _cli(address, token, "job", "status", job_id).stdout.strip() == "STOPPED"
