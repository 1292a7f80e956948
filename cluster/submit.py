"""Submit a recipe to a Ray cluster as a Ray Job; status, logs and stop.

Keep token authentication on (Ray 2.60: ``ray get-auth-token --generate`` then
``RAY_AUTH_MODE=token ray start --head``); ``client()`` finds the token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and sends it, so users need no extra setting.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

EXCLUDES = [".venv", ".git", "runs", "wandb", ".cache", "__pycache__", "*.egg-info", ".whl", ".gl"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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


def submit(address: str, recipe: str, overrides: list[str] | None = None, command: str = "run",
           working_dir: str = ".", env: dict[str, str] | None = None) -> str:
    """Upload ``working_dir`` (code and recipes, no venv/runs) and start the job; returns its id."""
    if not Path(recipe).is_file():
        raise FileNotFoundError(f"recipe {recipe} not found; pass a path like recipes/tiny_cpu.yaml")
    runtime_env = {"working_dir": working_dir, "excludes": EXCLUDES,
                   "env_vars": {"HF_HUB_OFFLINE": "1", **(env or {})}}
    return client(address).submit_job(entrypoint=entrypoint(command, recipe, list(overrides or [])),
                                      runtime_env=runtime_env)


def wait(address: str, job_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> str:
    """Block until the job ends (or ``timeout_s``); returns its final status name."""
    c, deadline = client(address), time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(job_id)).split(".")[-1]
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return client(address).stop_job(job_id)


def add_cluster_parsers(sub) -> None:
    """``awares-rl submit`` and ``awares-rl job {status,logs,stop}``."""
    p = sub.add_parser("submit", help="submit a recipe to a Ray cluster as a Ray Job")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"))
    p.add_argument("--recipe", required=True)
    p.add_argument("--command", default="run", help="awares-rl sub-command the job runs")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its logs")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_submit_cmd)
    j = sub.add_parser("job", help="status / logs / stop of a submitted job")
    j.add_argument("action", choices=("status", "logs", "stop"))
    j.add_argument("job_id")
    j.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"))
    j.set_defaults(func=_job_cmd)


def _submit_cmd(args) -> int:
    job_id = submit(args.address, args.recipe, args.overrides, args.command)
    print(job_id)
    if args.wait:
        status = wait(args.address, job_id)
        print(logs(args.address, job_id))
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _job_cmd(args) -> int:
    if args.action == "status":
        print(str(client(args.address).get_job_status(args.job_id)).split(".")[-1])
    elif args.action == "logs":
        print(logs(args.address, args.job_id))
    else:
        print(stop(args.address, args.job_id))
    return 0
