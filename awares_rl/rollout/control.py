"""The scale control channel of a running GRPO job: a named Ray actor in the run's own Ray cluster.

The trainer opens it (``ScaleChannel.open``): a ``ScaleControl`` actor under a random name in the
``awares-rl`` namespace, and a file in the run's GRPO folder, mode 0600, holding the cluster's
address and that name. Whoever can read the file (the run's owner) can reach the actor, through
Ray's own connection (its token auth where on); no port of its own is opened.

    awares-rl scale RUN_DIR --rollout-workers 3        # or request_scale(RUN_DIR, 3)

The trainer reads the wanted count at each step boundary (``ScaleChannel.pending``) and reports
the count it applied (``ScaleChannel.applied``); ``request_scale`` waits for that report.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import uuid
from pathlib import Path

import ray

from awares_rl.core.run_paths import RunPaths

CONTROL_FILE = "scale_control.json"  # in the run's GRPO log folder (RunPaths.logs("grpo"))
NAMESPACE = "awares-rl"


class ScaleError(RuntimeError):
    """A scale request that cannot be made: its message names the input and the fix."""


class ScaleControl:
    """Ray actor: the wanted rollout worker count, and the last one the trainer applied."""

    def __init__(self, workers: int) -> None:
        self.wanted, self.request_id = workers, 0
        self.done = {"request": 0, "workers": workers, "step": 0}

    def request(self, workers: int) -> int:
        """Ask for ``workers`` rollout workers from the next step on; returns the request's id."""
        if workers < 1:
            raise ValueError(f"--rollout-workers must be >= 1, got {workers}")
        self.wanted, self.request_id = workers, self.request_id + 1
        return self.request_id

    def poll(self) -> tuple[int, int]:
        """(wanted workers, id of the newest request)."""
        return self.wanted, self.request_id

    def applied(self, request: int, workers: int, step: int) -> None:
        self.done = {"request": request, "workers": workers, "step": step}

    def status(self) -> dict[str, int]:
        return dict(self.done)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600, whatever the umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    os.replace(tmp, path)


class ScaleChannel:
    """The trainer's side: the control actor and its 0600 file."""

    def __init__(self, actor, path: Path, timeout_s: float) -> None:
        self.actor, self.path, self.timeout_s = actor, path, timeout_s
        self.seen = 0  # the newest request applied

    @classmethod
    def open(cls, folder: Path, workers: int, timeout_s: float) -> ScaleChannel:
        name = f"scale-{uuid.uuid4().hex}"
        actor = ray.remote(ScaleControl).options(name=name, namespace=NAMESPACE, num_cpus=0).remote(workers)
        folder.mkdir(parents=True, exist_ok=True)
        address = ray.get_runtime_context().gcs_address
        write_private(folder / CONTROL_FILE, json.dumps({"address": address, "namespace": NAMESPACE, "actor": name}))
        return cls(actor, folder / CONTROL_FILE, timeout_s)

    def pending(self) -> tuple[int, int] | None:
        """(wanted workers, request id) of a request not applied yet, or None."""
        workers, request = self._get(self.actor.poll.remote(), "the scale control actor's poll")
        return (workers, request) if request > self.seen else None

    def applied(self, request: int, workers: int, step: int) -> None:
        """Tell requesters that ``request`` took effect: ``workers`` workers from ``step`` on."""
        self.seen = request
        self._get(self.actor.applied.remote(request, workers, step), "the scale control actor")

    def _get(self, ref, what: str):
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{what}: no answer within rollout.step_timeout_s={self.timeout_s:g} s") from None

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        ray.kill(self.actor)


def read_control_file(path: Path) -> dict[str, str]:
    """The channel's address and actor name; ScaleError when there is none, or it is not private."""
    if not path.is_file():
        raise ScaleError(f"no live GRPO job: {path} does not exist (it exists while `awares-rl grpo` runs on this "
                         "run dir); check RUN_DIR (e.g. runs/tiny_cpu) or start the run first")
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.getuid():
        raise ScaleError(f"{path} is not private to you (mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}): "
                         "refusing it; only the run's owner may scale it (the trainer writes it with mode 0600)")
    return json.loads(path.read_text())


def _reachable(address: str, timeout_s: float = 3.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def connect(control: dict[str, str], path: Path):
    """The control actor of ``control`` (read_control_file), connecting to its cluster if needed."""
    not_live = (f"the GRPO job of {path.parent.parent} is not running (its Ray cluster at {control['address']} "
                "{why}); a stale file from a killed run: resume the run, then scale it")
    if not _reachable(control["address"]):
        raise ScaleError(not_live.format(why="does not answer"))
    if not ray.is_initialized():
        ray.init(address=control["address"], namespace=control["namespace"], log_to_driver=False)
    elif ray.get_runtime_context().gcs_address != control["address"]:
        raise ScaleError(f"this process is connected to another Ray cluster than {path}'s ({control['address']}): "
                         "scale from a fresh process (`awares-rl scale`)")
    try:
        return ray.get_actor(control["actor"], namespace=control["namespace"])
    except ValueError:
        raise ScaleError(not_live.format(why="has no control actor")) from None


def request_scale(run_dir: Path, workers: int, wait_s: float = 600.0) -> dict[str, int]:
    """Ask the GRPO job of ``run_dir`` for ``workers`` rollout workers and wait (up to ``wait_s``)
    until it applies them at a step boundary; returns {"request", "workers", "step"}."""
    if workers < 1:
        raise ScaleError(f"--rollout-workers must be >= 1, got {workers}: a GRPO step needs a rollout worker")
    path = RunPaths(Path(run_dir)).logs("grpo") / CONTROL_FILE
    if not Path(run_dir).is_dir():
        raise ScaleError(f"no such run directory: {run_dir} (a run's folder, e.g. runs/tiny_cpu)")
    actor = connect(read_control_file(path), path)
    request = ray.get(actor.request.remote(workers), timeout=wait_s)
    deadline = time.monotonic() + wait_s
    while (status := ray.get(actor.status.remote(), timeout=wait_s))["request"] < request:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the GRPO job of {run_dir} did not reach a step boundary within {wait_s:g} s; "
                               f"the request for {workers} workers stays queued")
        time.sleep(0.2)
    return status
