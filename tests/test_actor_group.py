"""ActorGroup on a real local Ray: placement groups or free placement (not captured by a caller's
placement group), restarts after an actor dies, and chunks dealt round-robin in order."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import pytest

from cluster.actor_group import ActorGroup, DistInfo


class Probe:
    """Says where it runs, echoes chunks, and can die once."""

    def __init__(self, marker: str = "", dist: DistInfo | None = None) -> None:
        self.marker, self.rank = marker, dist.rank if dist else -1

    def where(self) -> tuple[int, str | None]:
        import ray

        pg = ray.util.get_current_placement_group()
        return self.rank, pg.id.hex() if pg else None

    def echo(self, chunk: Sequence[int], tag: str = "") -> tuple[int, list[int], str]:
        return self.rank, list(chunk), tag

    def pid(self) -> int:
        return os.getpid()

    def nap(self, chunk: Sequence[float]) -> float:
        time.sleep(max(chunk))
        return max(chunk)

    def die_once(self) -> int:
        """Exit the process the first time (the marker file says it happened); then the pid."""
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return os.getpid()


def test_group_placement_ranks_and_split(ray_session):
    group = ActorGroup(Probe, 2, cpus_per_actor=0.25)
    assert group.call("where") == [(0, group.pg.id.hex()), (1, group.pg.id.hex())]
    assert group.call_split("echo", [1, 2, 3], tag="s") == [(0, [1, 2], "s"), (1, [3], "s")]
    group.shutdown()
    assert group.actors == [] and group.pg is None


def _trial() -> tuple[list, tuple]:
    """In a task whose placement group captures child actors (as a Ray Tune trial's does): where a
    free ActorGroup's actors land, and where a plain actor lands."""
    import ray

    group = ActorGroup(Probe, 2, cpus_per_actor=0.25, placement="free")
    plain = ray.remote(Probe).options(num_cpus=0.25).remote()
    try:
        return group.call("where"), ray.get(plain.where.remote())
    finally:
        group.shutdown()
        ray.kill(plain)


def test_free_placement_escapes_a_capturing_placement_group(ray_session):
    ray = ray_session
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready())
    in_pg = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    trial = ray.remote(_trial).options(num_cpus=0.5, scheduling_strategy=in_pg)
    free, plain = ray.get(trial.remote())
    remove_placement_group(pg)
    assert plain[1] == pg.id.hex()  # the trial's group does capture a plain actor
    assert free == [(0, None), (1, None)]  # the free group's actors are outside it
    group = ActorGroup(Probe, 1, cpus_per_actor=0.25, placement="free")
    assert group.pg is None and group.call("where") == [(0, None)]
    group.shutdown()


def test_call_chunks_round_robin_in_chunk_order(ray_session):
    group = ActorGroup(Probe, 2, cpus_per_actor=0.25, placement="free")
    chunks = [[0], [1, 2], [3], [4, 5, 6], [7]]
    out = group.call_chunks("echo", chunks, tag="t")
    assert out == [(r, c, "t") for r, c in zip([0, 1, 0, 1, 0], chunks)]
    assert group.call_chunks("echo", [[8]]) == [(1, [8], "")]  # the turn carries over
    assert group.call_chunks("echo", []) == []
    group.shutdown()


def test_calls_wait_at_most_call_timeout_s(ray_session):
    group = ActorGroup(Probe, 1, cpus_per_actor=0.25, placement="free", call_timeout_s=2.0)
    ray_session.get(group.actors[0].pid.remote())  # the actor is up (its start, under load, is not what is bounded)
    assert group.call_chunks("nap", [[0.0]]) == [0.0]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"2 call\(s\) of Probe.nap on 1 actor\(s\) not answered within 2 s"):
        group.call_chunks("nap", [[0.0], [30.0]])
    assert time.monotonic() - start < 10
    group.shutdown()


def test_call_chunks_in_process():
    group = ActorGroup(Probe, 1, in_process=True)
    assert group.call_chunks("echo", [[1], [2, 3]]) == [(0, [1], ""), (0, [2, 3], "")]


def test_restarts_after_exit_and_kill(ray_session, tmp_path):
    ray = ray_session
    group = ActorGroup(Probe, 1, str(tmp_path / "died"), cpus_per_actor=0.25, placement="free",
                       max_restarts=2, max_task_retries=2)
    first = group.call("pid")[0]
    second = group.call("die_once")[0]  # os._exit in the call: restarted, the call retried
    assert second != first
    ray.kill(group.actors[0], no_restart=False)  # asynchronous: a call may still reach the old one
    deadline = time.monotonic() + 60
    while (third := group.call("pid")[0]) == second and time.monotonic() < deadline:
        time.sleep(0.2)
    assert third not in (first, second)
    group.shutdown()

    fragile = ActorGroup(Probe, 1, str(tmp_path / "died_too"), cpus_per_actor=0.25, placement="free")
    with pytest.raises(ray.exceptions.RayActorError):
        fragile.call("die_once")
    fragile.shutdown()


def test_bad_placement():
    with pytest.raises(ValueError, match="placement must be"):
        ActorGroup(Probe, 1, placement="spread")  # type: ignore[arg-type]


def test_submitted_calls_of_two_groups_run_at_once(ray_session):
    """submit_split starts the call and returns its waiter: two groups' 1 s naps overlap."""
    a, b = ActorGroup(Probe, 1, cpus_per_actor=0.25), ActorGroup(Probe, 1, cpus_per_actor=0.25)
    try:
        a.call("pid"), b.call("pid")  # both up
        start = time.perf_counter()
        wait_a, wait_b = a.submit_split("nap", [1.0]), b.submit_split("nap", [1.0])
        assert wait_a() == [1.0] and wait_b() == [1.0]
        assert time.perf_counter() - start < 1.8  # one after the other would take 2 s
        local = ActorGroup(Probe, 1, in_process=True)
        assert local.submit_split("echo", [4, 5], tag="x")() == [(0, [4, 5], "x")]
    finally:
        a.shutdown(), b.shutdown()
