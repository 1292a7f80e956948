"""A real Ray head (token auth on, as `ray start --head` does in Ray 2.60) and a submitted job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cluster import submit as sub
from tests.ray_head import start_head, stop_head

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_head():
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        yield start_head(sys.executable, tmp, env, num_cpus=1), tmp / ".ray" / "auth_token"
    finally:
        stop_head(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_entrypoint_quotes_overrides():
    assert sub.entrypoint("run", "recipes/x.yaml", ["run.name=a b"]) == \
        "python -m awares_rl.cli run recipes/x.yaml 'run.name=a b'"
    assert sub.entrypoint("config", "r.yaml", []) == "python -m awares_rl.cli config --recipe r.yaml"


def test_missing_recipe_is_refused():
    with pytest.raises(sub.SubmitError, match="recipes/tiny_cpu.yaml"):
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


def test_runtime_env_ships_the_checkout_without_venvs_and_runs(tmp_path):
    renv = sub.runtime_env(ROOT)
    assert renv["working_dir"] == str(ROOT) and {".venv", "runs", ".cache", ".git"} <= set(renv["excludes"])
    assert renv["env_vars"]["HF_HUB_OFFLINE"] == "1" and "pip" not in renv
    with pytest.raises(sub.SubmitError, match="not an awares-rl checkout.*--working-dir"):
        sub.runtime_env(tmp_path)


def test_pip_pins_are_read_and_loose_ones_refused(tmp_path):
    reqs = tmp_path / "req.txt"
    reqs.write_text("# pins\nray==2.60.0  # the cluster's\n\nfoo @ https://x/foo.whl\n")
    assert sub.runtime_env(ROOT, pip=reqs)["pip"] == {"packages": ["ray==2.60.0", "foo @ https://x/foo.whl"],
                                                     "pip_check": False}
    reqs.write_text("ray>=2.0\n")
    with pytest.raises(sub.SubmitError, match=r"\['ray>=2.0'\] not pinned; write name==version"):
        sub.read_requirements(reqs)
    with pytest.raises(sub.SubmitError, match="nope.txt not found"):
        sub.read_requirements(tmp_path / "nope.txt")


def test_recipe_must_be_inside_what_is_shipped(tmp_path):
    assert sub.shipped_recipe(ROOT / "recipes/smoke.yaml", ROOT) == "recipes/smoke.yaml"
    outside = tmp_path / "r.yaml"
    outside.write_text("run: {name: x}\n")
    with pytest.raises(sub.SubmitError, match="outside the shipped working_dir"):
        sub.shipped_recipe(outside, ROOT)


def test_submit_cli_refuses_bad_input_before_contacting_the_cluster(tmp_path, capsys):
    from awares_rl.cli import main

    nowhere = ["--address", "http://127.0.0.1:9"]  # nothing listens: any contact would fail differently
    outside = tmp_path / "smoke.yaml"
    outside.write_text((ROOT / "recipes/smoke.yaml").read_text())
    assert main(["submit", *nowhere, "--recipe", str(outside)]) == 1
    assert "outside the shipped working_dir" in capsys.readouterr().err
    assert main(["submit", *nowhere, "--recipe", str(ROOT / "recipes/smoke.yaml"), "grpo.steps=-1"]) == 2
    assert "grpo.steps" in capsys.readouterr().err


class _Recorder:
    """Stands in for the cluster's JobSubmissionClient: records what submit_job is sent."""

    def __init__(self):
        self.sent = {}

    def submit_job(self, **kwargs):
        self.sent = kwargs
        return "raysubmit_x"


@pytest.mark.parametrize(("recipe", "cpus", "gpus"), [("recipes/smoke.yaml", 1, None),
                                                       ("recipes/qwen25vl_7b_gpu.yaml", 4, 1)])
def test_submit_reserves_the_drivers_share(monkeypatch, capsys, recipe, cpus, gpus):
    from awares_rl.cli import main

    rec = _Recorder()
    monkeypatch.setattr(sub, "client", lambda address: rec)
    monkeypatch.chdir(ROOT)
    assert main(["submit", "--address", "http://h:8265", "--recipe", recipe]) == 0
    assert capsys.readouterr().out.strip() == "raysubmit_x"
    assert (rec.sent["entrypoint_num_cpus"], rec.sent["entrypoint_num_gpus"]) == (cpus, gpus)
    assert rec.sent["entrypoint"] == f"python -m awares_rl.cli run {recipe}"
    assert rec.sent["runtime_env"]["working_dir"] == "."


def test_submit_waits_for_a_job_agent_then_gives_up_naming_it():
    """A head just started answers "No available agent" (CI saw it): that is retried, other errors
    are not, and the wait ends in a TimeoutError naming the head and the setting."""
    calls = []

    def agent_late():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                               "please try again later..")
        return "raysubmit_1"

    assert sub.when_agent_ready(agent_late, "http://h:8265", timeout_s=10, poll_s=0.01) == "raysubmit_1"
    assert len(calls) == 3

    def never():
        raise RuntimeError("Request failed with status code 500: No available agent to submit job")

    with pytest.raises(TimeoutError, match="http://h:8265.*AWARES_JOB_AGENT_TIMEOUT_S"):
        sub.when_agent_ready(never, "http://h:8265", timeout_s=0.1, poll_s=0.02)

    def bad_request():
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: bad runtime_env")

    calls.clear()
    with pytest.raises(RuntimeError, match="400"):
        sub.when_agent_ready(bad_request, "http://h:8265", timeout_s=10, poll_s=0.01)
    assert len(calls) == 1
