"""ActorGroup: N copies of one class as Ray actors in a placement group, with torch.distributed
ranks, and fan-out calls (OpenRLHF's ``RayActorGroup`` is the model).

    group = ActorGroup(LearnerWorker, 2, model_path, cfg, cpus_per_actor=1)
    metrics = group.call_split("sft_step", sequences)   # sequences split across the 2 workers
    group.call("save", out_dir)                         # the same call on every worker
    group.shutdown()

Each actor gets ``dist=DistInfo(rank, world_size, master_addr, master_port)`` as a keyword
argument; the master is a free port on the node of bundle 0. The same code runs under a local
``ray.init()`` and on a cluster. ``in_process=True`` (one worker only) builds the object in the
driver process instead: no Ray, same interface (tests, debugging).

``placement="free"`` places each actor on its own (no placement group, no torch.distributed
master: for actors that do not form a process group, such as reward scorers), and
``call_chunks`` sends a list of argument chunks round-robin over the actors:

    group = ActorGroup(RewardService, 2, cfg, placement="free", max_restarts=2, max_task_retries=2)
    parts = group.call_chunks("score", [chunk_a, chunk_b, chunk_c])   # in chunk order
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# Environment variables handed to every actor when set in the driver (caches, accelerator).
# How long a placement group may wait for free resources (its size was checked against the cluster
# by cluster.resources.check_resources; a wait means other jobs hold them). AWARES_PLACEMENT_TIMEOUT_S.
PLACEMENT_TIMEOUT_S = float(os.environ.get("AWARES_PLACEMENT_TIMEOUT_S", "600"))
FORWARD_ENV = ("TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
# Set (``awares-rl --verbose``): actors' output (vLLM, DeepSpeed, ...) is printed by the driver too;
# otherwise it stays in the Ray session's worker logs (``awares-rl run`` links them into the run).
VERBOSE_ENV = "AWARES_RL_VERBOSE"


def log_to_driver() -> bool:
    """Whether a Ray started here prints its actors' output in the driver (``VERBOSE_ENV``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class DistInfo:
    """Where an actor sits in its torch.distributed group."""

    rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def export(self) -> None:
        """Set the env:// variables torch.distributed and DeepSpeed read."""
        os.environ.update(RANK=str(self.rank), LOCAL_RANK="0", WORLD_SIZE=str(self.world_size),
                          MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _master_address() -> tuple[str, int]:
    import ray

    return ray.util.get_node_ip_address(), free_port()


RAY_START_TIMEOUT = "timed out during startup"  # Ray's bare Exception when its raylet misses the deadline


def init_local_ray(tries: int = 3, **init_kwargs) -> None:
    """``ray.init(**init_kwargs)`` for a local cluster, retried when the raylet misses Ray's fixed
    registration deadline (it does on a loaded 2-core machine: "node timed out during startup"),
    ending the processes a failed start left behind; the raylet's own wait is raised to 120 s
    (``RAY_raylet_start_wait_time_s``, unless set). Any other error is raised at once."""
    import psutil
    import ray

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    for attempt in range(1, tries + 1):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            ray.init(**init_kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for it
            if RAY_START_TIMEOUT not in str(e) or attempt == tries:
                raise
            ray.shutdown()
            _end([p for p in psutil.Process().children(recursive=True) if p.pid not in before])


def _end(procs: list) -> None:
    """Terminate (then kill) ``procs`` (psutil processes): what a failed Ray start left running."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def ensure_ray() -> bool:
    """``ray.init()`` (a local cluster, or ``RAY_ADDRESS``'s) unless Ray is up; True if started here.
    Actors' output reaches the driver only with ``VERBOSE_ENV`` set (``log_to_driver``)."""
    import ray

    if ray.is_initialized():
        return False
    init_local_ray(include_dashboard=False, log_to_driver=log_to_driver())  # or joins RAY_ADDRESS's
    return True


# Runs in its own session: waits for its parent (the actor) to go, then kills the actor's group.
_REAPER = """
import os, signal, sys, time
actor = int(sys.argv[1])
while os.getppid() == actor:
    time.sleep(1)
try:
    os.killpg(actor, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def reap_group_on_exit() -> subprocess.Popen | None:
    """In a Ray actor, start a reaper that SIGKILLs the actor's process group (the processes it
    spawned) once the actor is gone, however it died; returns it, or None outside a Ray actor.

    Ray gives each worker its own process group and kills that group when the worker exits, but
    only while the raylet lives. When a whole run is killed (``kill -9``), the actors die with
    their raylet and what they spawned would keep running: vLLM's engine core and its workers have
    no parent-death check and keep their KV cache. Elsewhere (a driver started from a shell shares
    its group with the rest of its pipeline) nothing is started.
    """
    if "RAY_RAYLET_PID" not in os.environ or os.getpgid(0) != os.getpid():
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ray_logs_dir() -> str | None:
    """The worker-log folder of the Ray session this driver is connected to, if any."""
    import ray

    node = ray._private.worker._global_node if ray.is_initialized() else None  # no public accessor
    return node.get_logs_dir_path() if node is not None else None


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """Contiguous shards whose sizes differ by at most one (the first shards are larger)."""
    if len(items) < parts:
        raise ValueError(f"cannot split {len(items)} items across {parts} workers; give each at least one")
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(items[bounds[i]:bounds[i + 1]]) for i in range(parts)]


class ActorGroup:
    """``num_actors`` actors of ``cls``: in one placement group (one bundle each), or with
    ``placement="free"`` each where the cluster has room."""

    def __init__(self, cls: type, num_actors: int, *args: Any, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, in_process: bool = False, strategy: str = "PACK",
                 placement: Literal["group", "free"] = "group", max_restarts: int = 0,
                 max_task_retries: int = 0, call_timeout_s: float | None = None, **kwargs: Any) -> None:
        """``call_timeout_s``: how long ``call`` / ``call_split`` / ``call_chunks`` wait for their
        results before a TimeoutError naming the class and method (None: no bound)."""
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if in_process and num_actors != 1:
            raise ValueError("in_process=True runs one worker in the driver; use num_actors=1 or Ray")
        if placement not in ("group", "free"):
            raise ValueError(f"placement must be 'group' or 'free', got {placement!r}")
        self.num_actors, self.pg, self.actors = num_actors, None, []
        self.name, self.call_timeout_s = cls.__name__, call_timeout_s
        self._turn = itertools.count()
        self.local = cls(*args, dist=DistInfo(master_port=free_port()), **kwargs) if in_process else None
        if self.local is None:
            restarts = {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
            self._start(cls, args, kwargs, cpus_per_actor, gpus_per_actor, strategy, placement, restarts)

    def _start(self, cls, args, kwargs, cpus: float, gpus: float, strategy: str, placement: str,
               restarts: dict[str, int]) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        remote_cls = ray.remote(cls)
        opts = {"num_cpus": cpus, "num_gpus": gpus, **restarts, "runtime_env": {"env_vars": env} if env else None}
        if placement == "free":
            # "DEFAULT": placed on the cluster's free resources, never captured into a caller's
            # placement group (a Ray Tune trial's holds only the trial itself)
            self.actors = [remote_cls.options(**opts, scheduling_strategy="DEFAULT")
                           .remote(*args, dist=DistInfo(i, self.num_actors), **kwargs)
                           for i in range(self.num_actors)]
            return
        bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.pg = placement_group([bundle] * self.num_actors, strategy=strategy)
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            self.pg = None
            raise TimeoutError(
                f"placement of {self.num_actors} x {cls.__name__} ({bundle} each) not ready after "
                f"{PLACEMENT_TIMEOUT_S:g} s: the cluster has not that much free (`ray status`); other jobs "
                "may hold it, or lower the recipe's num_workers / cpus_per_worker / gpus_per_worker") from None

        def at(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i)

        addr, port = ray.get(ray.remote(_master_address).options(num_cpus=0, scheduling_strategy=at(0)).remote())
        self.actors = [
            remote_cls.options(**opts, scheduling_strategy=at(i))
            .remote(*args, dist=DistInfo(i, self.num_actors, addr, port), **kwargs)
            for i in range(self.num_actors)
        ]

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """``method(*args, **kwargs)`` on every actor; their results in rank order."""
        if self.local is not None:
            return [getattr(self.local, method)(*args, **kwargs)]
        return self._get(method, [getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def call_split(self, method: str, items: Sequence, *args: Any, **kwargs: Any) -> list[Any]:
        """``method(shard, *args, **kwargs)`` with ``items`` split evenly across the actors."""
        if self.local is not None:
            return [getattr(self.local, method)(list(items), *args, **kwargs)]
        shards = split_evenly(items, self.num_actors)
        return self._get(method, [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards)])

    def submit_split(self, method: str, items: Sequence, *args: Any, **kwargs: Any) -> Callable[[], list[Any]]:
        """``call_split`` started now, its results waited for later: returns the function that
        waits for them (within ``call_timeout_s``). Two groups' calls so submitted run at once (an
        object in the driver runs its call here, before returning)."""
        if self.local is not None:
            done = [getattr(self.local, method)(list(items), *args, **kwargs)]
            return lambda: done
        shards = split_evenly(items, self.num_actors)
        refs = [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards)]
        return lambda: self._get(method, refs)

    def call_chunks(self, method: str, chunks: Sequence, *args: Any, **kwargs: Any) -> list[Any]:
        """``method(chunk, *args, **kwargs)`` once per chunk, the chunks dealt round-robin over the
        actors (the turn carries over between calls); the results in chunk order."""
        if self.local is not None:
            return [getattr(self.local, method)(c, *args, **kwargs) for c in chunks]
        return self._get(method, [getattr(self.actors[next(self._turn) % self.num_actors], method)
                                  .remote(c, *args, **kwargs) for c in chunks])

    def _get(self, method: str, refs: list) -> list[Any]:
        """``ray.get(refs)`` within ``call_timeout_s``; past it a TimeoutError naming what it waited for."""
        import ray

        try:
            return ray.get(refs, timeout=self.call_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"{len(refs)} call(s) of {self.name}.{method} on {self.num_actors} actor(s) not answered within "
                f"{self.call_timeout_s:g} s: the actors are overloaded or hung (their logs: `ray logs`)") from None

    def shutdown(self) -> None:
        """Kill the actors and release the placement group, if any."""
        self.local = None
        if self.actors:
            import ray

            for a in self.actors:
                ray.kill(a)
            self.actors = []
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None
