"""Ship the project and a recipe to a Ray cluster as a Ray Job; status, logs and stop.

The job carries its code: ``working_dir`` is the checkout (uploaded by Ray, without venvs, runs
and caches), the job's cwd and on every worker's PYTHONPATH, so a cluster needs only the
dependencies (``--pip FILE`` installs pinned ones it lacks). The awares-rl CLI glue is in
``awares_rl/commands/cluster.py``.

Keep token authentication on (Ray 2.60: ``ray get-auth-token --generate`` then
``RAY_AUTH_MODE=token ray start --head``); ``client()`` finds the token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and sends it, so users need no extra setting.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

# Never shipped (Ray also skips what .gitignore names): environments, run outputs, caches.
EXCLUDES = [".venv", ".git", "runs", "wandb", ".cache", "__pycache__", "*.egg-info", ".whl", ".gl",
            ".pytest_cache", ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# A head just started has no job agent yet and answers 500 "No available agent to submit job,
# please try again later"; submit retries that (and only that) this long.
AGENT_WAIT_S = float(os.environ.get("AWARES_JOB_AGENT_TIMEOUT_S", "180"))


class SubmitError(ValueError):
    """What is to be shipped is wrong (a recipe, the checkout, a requirements file): names it and the fix."""


def auth_token() -> str | None:
    """The cluster token: ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def client(address: str):
    """A JobSubmissionClient for ``address`` (e.g. http://head:8265) that sends the cluster token
    as a bearer header whenever one is available (Ray caches its own auth mode at import, so an
    explicit header is the reliable way)."""
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)


def entrypoint(command: str, recipe: str, overrides: list[str]) -> str:
    """The shell command the job runs on the cluster: ``python -m awares_rl.cli ...``."""
    args = [command] if command == "run" else [command, "--recipe"]
    parts = ["python", "-m", "awares_rl.cli", *args, recipe, *overrides]
    return " ".join(shlex.quote(p) for p in parts)


def read_requirements(path: str | Path) -> list[str]:
    """The pins of a pip requirements file (``name==version`` or ``name @ url`` lines; comments and
    blank lines skipped), for a cluster that lacks them."""
    file = Path(path)
    if not file.is_file():
        raise SubmitError(f"requirements file {file} not found; pass a pip requirements file, e.g. --pip constraints.txt")
    reqs = [r for r in (line.split("#")[0].strip() for line in file.read_text().splitlines()) if r]
    loose = [r for r in reqs if "==" not in r and " @ " not in r]
    if loose:
        raise SubmitError(f"{file}: {loose} not pinned; write name==version so every node installs the same")
    return reqs


def runtime_env(working_dir: str | Path = ".", env: dict[str, str] | None = None,
                pip: str | Path | None = None) -> dict:
    """The job's runtime_env: the checkout ``working_dir``, env vars and, with ``pip``, a
    requirements file's pins installed on the nodes."""
    root = Path(working_dir)
    if not (root / "awares_rl" / "__init__.py").is_file():
        raise SubmitError(f"working_dir {root.resolve()} is not an awares-rl checkout (no awares_rl/__init__.py); "
                                "run from the repository root or pass --working-dir")
    renv = {"working_dir": str(root), "excludes": EXCLUDES,
            "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}}
    if pip:
        renv["pip"] = {"packages": read_requirements(pip), "pip_check": False}
    return renv


def shipped_recipe(recipe: str | Path, working_dir: str | Path) -> str:
    """``recipe`` as the job sees it: its path inside the shipped ``working_dir``."""
    path, root = Path(recipe).resolve(), Path(working_dir).resolve()
    if not path.is_file():
        raise SubmitError(f"recipe {recipe} not found; pass a path like recipes/tiny_cpu.yaml")
    if not path.is_relative_to(root):
        raise SubmitError(f"recipe {recipe} is outside the shipped working_dir {root}; copy it under {root}")
    return str(path.relative_to(root))


def submit(address: str, recipe: str, overrides: list[str] | None = None, command: str = "run",
           working_dir: str = ".", env: dict[str, str] | None = None, pip: str | None = None,
           entrypoint_cpus: float | None = None, entrypoint_gpus: float | None = None) -> str:
    """Ship ``working_dir`` and start the job; returns its id. ``entrypoint_cpus``/``_gpus``
    reserve the driver's share, which places it on a node that has it (``cluster.resources``)."""
    rel = shipped_recipe(recipe, working_dir)
    jobs, renv = client(address), runtime_env(working_dir, env, pip)
    return when_agent_ready(lambda: jobs.submit_job(
        entrypoint=entrypoint(command, rel, list(overrides or [])), runtime_env=renv,
        entrypoint_num_cpus=entrypoint_cpus, entrypoint_num_gpus=entrypoint_gpus), address)


def no_agent_yet(error: BaseException) -> bool:
    """Ray's answer while the head has no job agent registered yet (a head just started)."""
    return "No available agent" in str(error)


def when_agent_ready(call, address: str, timeout_s: float | None = None, poll_s: float = 2.0):
    """``call()``, retried every ``poll_s`` while the head at ``address`` has no job agent yet; a
    TimeoutError after ``timeout_s`` (default ``AWARES_JOB_AGENT_TIMEOUT_S``, 180 s) names what it
    waited for. Any other error is raised at once."""
    from tenacity import RetryError, Retrying, retry_if_exception, stop_after_delay, wait_fixed

    limit = AGENT_WAIT_S if timeout_s is None else timeout_s
    try:
        for attempt in Retrying(retry=retry_if_exception(no_agent_yet), stop=stop_after_delay(limit),
                                wait=wait_fixed(poll_s)):
            with attempt:
                return call()
    except RetryError as e:
        raise TimeoutError(f"the Ray head at {address} had no job agent after {limit:.0f} s (its dashboard agent "
                           "has not registered); check `ray status` on the head and its dashboard_agent.log (an "
                           "agent that cannot bind its HTTP port, 52365 unless `ray start "
                           "--dashboard-agent-listen-port` says otherwise, never registers: another Ray on that "
                           "machine may hold it), or raise AWARES_JOB_AGENT_TIMEOUT_S") from e.last_attempt.exception()


def status(address: str, job_id: str) -> str:
    """The job's status name: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return str(client(address).get_job_status(job_id)).split(".")[-1]


def wait(address: str, job_id: str, timeout_s: float = 3600, poll_s: float = 2.0,
         until: tuple[str, ...] = TERMINAL) -> str:
    """Block until the job's status is one of ``until`` (default: it ended) and return it; a
    TimeoutError names the job, the status it stayed in and what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = status(address, job_id)
        if now in until:
            return now
        if now in TERMINAL:
            raise RuntimeError(f"job {job_id} ended {now} while waiting for {'/'.join(until)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {now} after {timeout_s:.0f} s waiting for {'/'.join(until)}")
        time.sleep(poll_s)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str, timeout_s: float = 120) -> str:
    """Ask the job to stop and wait until it has ended; returns its final status."""
    client(address).stop_job(job_id)
    return wait(address, job_id, timeout_s, poll_s=1.0)
