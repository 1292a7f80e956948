"""A real Ray head for tests, token auth on (as `ray start --head` does in Ray 2.60), in its own
short temp dir with HOME pointing there; stopped by killing exactly its own processes (`ray stop`
would kill every Ray on the machine, other users' too)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (all held open together while they are picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_head(python: Path | str, home: Path, env: dict[str, str], num_cpus: int, attempts: int = 2) -> str:
    """``ray start --head`` with ``python`` (its workers run it too), HOME=``home`` (the token goes
    to ``home/.ray/auth_token``); returns the dashboard address."""
    ray = [str(python), "-m", "ray.scripts.scripts"]
    env = {**env, "HOME": str(home)}
    env.pop("RAY_AUTH_MODE", None)
    # Ray 2.60's `ray start --head` turns token auth on only when a token exists: make one first
    subprocess.run([*ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    head, dash, agent, client = free_ports(4)
    # every port Ray would otherwise fix: another Ray on this machine (a test's local session, a
    # head not yet gone) holds the dashboard agent's 52365, and an agent that cannot bind it runs
    # without HTTP, so the head never gets a job agent ("No available agent to submit job")
    ports = {"port": head, "dashboard-port": dash, "dashboard-agent-listen-port": agent,
             "ray-client-server-port": client}
    cmd = [*ray, "start", "--head", *(f"--{k}={v}" for k, v in ports.items()), "--dashboard-host=127.0.0.1",
           f"--num-cpus={num_cpus}", "--object-store-memory=300000000", f"--temp-dir={home}/ray",
           "--disable-usage-stats"]
    for _ in range(attempts):
        out = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "token"}, cwd=home, capture_output=True, text=True,
                             timeout=300)
        if out.returncode == 0:
            return f"http://127.0.0.1:{dash}"
        stop_head(home)  # e.g. Ray's fixed 30 s for the raylet to register, missed on a loaded machine
    raise RuntimeError(f"ray start --head failed {attempts} times: {out.stdout[-1500:]}{out.stderr[-1500:]}")


def _own_pids(home: Path) -> list[int]:
    """Processes whose environment has HOME=``home``: the head's, its workers' and its jobs'."""
    marker = f"HOME={home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
    return pids


def stop_head(home: Path, timeout_s: float = 30) -> None:
    """SIGKILL the head's processes, by id, until none is left (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while (pids := _own_pids(home)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
