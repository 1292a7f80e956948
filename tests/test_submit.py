"""A real Ray head (token auth on, as `ray start --head` does in Ray 2.60) and a submitted job."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster import submit as sub

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "HOME": tmp, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_AUTH_MODE", None)
    # Ray 2.60's `ray start --head` turns token auth on only when a token exists: make one first.
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    env["RAY_AUTH_MODE"] = "token"
    dash = _free_port()
    cmd = [RAY, "start", "--head", f"--port={_free_port()}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", "--num-cpus=1", f"--temp-dir={tmp}/ray", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", Path(tmp) / ".ray" / "auth_token"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def test_entrypoint_quotes_overrides():
    assert sub.entrypoint("run", "recipes/x.yaml", ["run.name=a b"]) == \
        "python -m awares_rl.cli run recipes/x.yaml 'run.name=a b'"
    assert sub.entrypoint("config", "r.yaml", []) == "python -m awares_rl.cli config --recipe r.yaml"


def test_missing_recipe_is_refused():
    with pytest.raises(FileNotFoundError, match="recipes/tiny_cpu.yaml"):
        sub.submit("http://127.0.0.1:1", "recipes/nope.yaml")


def _client_env(**extra: str) -> dict[str, str]:
    # a fresh client process each time: Ray caches its auth token per process, and other tests
    # in this session may have started their own local cluster with another token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, **extra}


def test_submit_runs_on_a_real_cluster_with_token_auth(ray_head):
    address, token = ray_head
    assert token.is_file()
    cmd = [sys.executable, "-m", "awares_rl.cli", "submit", "--address", address, "--recipe",
           "recipes/tiny_cpu.yaml", "--command", "config", "--wait", "run.name=from_job"]
    out = subprocess.run(cmd, env=_client_env(RAY_AUTH_TOKEN_PATH=str(token)), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "name: from_job" in out.stdout and "SUCCEEDED" in out.stdout


def test_cluster_refuses_a_client_without_the_token(ray_head, tmp_path):
    address, _ = ray_head
    # a fresh process (Ray caches its auth mode per process) with no token anywhere
    env = _client_env(HOME=str(tmp_path), RAY_AUTH_MODE="disabled")
    code = f"from cluster.submit import client; print(client({address!r}).list_jobs())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert any(w in (out.stderr + out.stdout).lower() for w in ("auth", "token", "401", "403"))
