"""RolloutPool: GRPO's rollout workers, fault tolerant and resizable between steps.

Each worker is a one-actor ``ActorGroup`` (free placement) that Ray restarts up to
``rollout.max_restarts`` times. A step's prompts are cut into one shard per worker, each with the
seed of its offset (``sampling_seed(run_seed, step, offset * G)``; the runner adds the episode
index), so the episodes depend on the prompts and seeds only, never on which worker ran them:

    pool = RolloutPool(cfg.rollout, model_cfg, model_path, seed)
    episodes, report = pool.rollout(samples, root, step, run_seed)   # exactly len(samples) * G
    pool.push(weights, version)                                      # every worker, versioned
    pool.resize(3)                                                   # at a step boundary

A worker that dies mid-step loses its unfinished shard, which goes, with the same seed, to the
least busy live worker (or to the restarted one, once it has the pool's latest weights). A
restarted or new worker gets the latest ``push``ed weights before its first shard; an answer
made with any other policy version is discarded and its shard re-issued, so none is lost or
counted twice. The weights object is opaque here: it is handed to ``load_weights`` as it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from awares_rl.core.episode import Episode
from awares_rl.rollout.config import RolloutConfig
from awares_rl.rollout.worker import RolloutWorker
from awares_rl.sampling import sampling_seed
from cluster.actor_group import ActorGroup, split_evenly

log = logging.getLogger(__name__)

# A worker killed, restarting or unreachable (ActorDiedError, ActorUnavailableError, ...)
WORKER_LOST = ray.exceptions.RayActorError
RESTARTING = ray.exceptions.ActorUnavailableError  # what a call to a restarting actor gets at once


class RolloutPoolError(RuntimeError):
    """No rollout worker is left, or a shard failed on every try."""


@dataclass(frozen=True)
class Shard:
    """A contiguous part of a step's prompts and its sampling seed."""

    offset: int  # index of its first prompt in the step's batch
    samples: list
    seed: int


@dataclass
class StepReport:
    """What went wrong in one step, for the metrics."""

    workers_lost: int = 0
    reissued_prompts: int = 0
    num_workers: int = 0  # workers the step's prompts were split over


def step_shards(samples: Sequence, parts: int, run_seed: int, step: int, group_size: int,
                start: int = 0) -> list[Shard]:
    """``samples`` cut into ``min(parts, len(samples))`` contiguous shards, each seeded by its
    offset among the step's prompts (``samples[0]`` at ``start``)."""
    shards, offset = [], start
    for part in split_evenly(samples, min(parts, len(samples))):
        shards.append(Shard(offset, part, sampling_seed(run_seed, step, offset * group_size)))
        offset += len(part)
    return shards


class _Worker:
    """One rollout actor and what the pool knows of it."""

    def __init__(self, index: int, group: ActorGroup) -> None:
        self.index, self.group = index, group
        self.losses = 0
        self.stale = True  # its weights may not be the pool's latest (new or restarted)
        self.probe = None  # after a loss: a pid() call that answers once Ray has restarted it

    @property
    def actor(self):
        return self.group.actors[0]


class RolloutPool:
    """``num_workers`` (default ``cfg.num_workers``) RolloutWorkers built from ``worker_args``
    (the RolloutWorker arguments after the config)."""

    def __init__(self, cfg: RolloutConfig, *worker_args: Any, num_workers: int | None = None,
                 **worker_kwargs: Any) -> None:
        self.cfg, self._args, self._kwargs = cfg, worker_args, worker_kwargs
        self.weights: Any = None  # the latest pushed weights object and its policy version
        self.version = 0
        self.workers: list[_Worker] = []
        self._started = 0
        self.rolling_step: int | None = None  # the step whose rollouts are in flight, if any
        self.report = StepReport()  # the current step's losses: its rollout's, then its push's
        self.resize(num_workers or cfg.num_workers)

    def __len__(self) -> int:
        return len(self.workers)

    def _start(self) -> _Worker:
        group = ActorGroup(RolloutWorker, 1, self.cfg, *self._args, cpus_per_actor=self.cfg.cpus_per_worker,
                           gpus_per_actor=self.cfg.gpus_per_worker, placement="free",
                           max_restarts=self.cfg.max_restarts, **self._kwargs)
        self._started += 1
        return _Worker(self._started - 1, group)

    def _stop(self, w: _Worker) -> None:
        """Close the worker's engine (it is idle between steps), then kill the actor."""
        try:
            ray.get(w.actor.close.remote(), timeout=self.cfg.step_timeout_s)
        except (WORKER_LOST, ray.exceptions.GetTimeoutError) as e:
            log.warning("rollout worker %d did not close cleanly (%s): killed", w.index, type(e).__name__)
        w.group.shutdown()

    def resize(self, n: int) -> None:
        """``n`` workers from the next step on: the newest stop, new ones start on the latest weights."""
        if n < 1:
            raise ValueError(f"a rollout pool needs at least 1 worker, got {n}")
        while len(self.workers) > n:
            self._stop(self.workers.pop())
        while len(self.workers) < n:
            self.workers.append(self._start())
        log.info("rollout workers: %d (policy version %d)", n, self.version)

    def pids(self) -> list[int]:
        """Each worker's process id, in pool order."""
        return self._gather([w.actor.pid.remote() for w in self.workers], "the rollout workers' pids")

    def push(self, weights: Any, version: int) -> float:
        """Load ``weights`` (policy ``version``) into every worker and keep them for restarted and
        new workers; returns the slowest load's seconds. A worker lost meanwhile is replayed later."""
        self.weights, self.version = weights, version
        # a restarting worker stays stale: it gets these weights before its next shard
        refs = {w.actor.load_weights.remote(weights, version): w for w in list(self.workers) if self._up(w)}
        seconds, deadline = [0.0], self._deadline()
        for ref, w in refs.items():
            try:
                seconds.append(ray.get(ref, timeout=self._left(deadline)))
                w.stale = False
            except WORKER_LOST as e:
                self._lose(w, e, f"loading policy version {version}")
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"rollout worker {w.index} did not load policy version {version} within "
                                   f"rollout.step_timeout_s={self.cfg.step_timeout_s:g} s") from None
        return max(seconds)

    def rollout(self, samples: Sequence, root: str, step: int, run_seed: int,
                start: int = 0) -> tuple[list[Episode], StepReport]:
        """``group_size`` episodes per sample (group-contiguous, in sample order) and the step's
        report (``self.report``: the next ``push`` adds its losses to it); a dead worker's shard is
        re-issued with its seed to another worker."""
        self.report = report = StepReport(num_workers=len(self.workers))
        done, inflight = {}, {}
        shards = step_shards(samples, len(self.workers), run_seed, step, self.cfg.group_size, start)
        deadline, tries = self._deadline(), dict.fromkeys((s.offset for s in shards), 0)
        self.rolling_step = step
        try:
            for shard, w in zip(shards, list(self.workers)):  # a restarting worker's shard goes elsewhere
                w = w if self._up(w) else self._pick(inflight.values(), deadline)
                inflight[self._issue(w, shard, root)] = (shard, w)
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self._left(deadline))
                if not ready:
                    raise TimeoutError(self._late(step, inflight.values()))
                shard, w = inflight.pop(ready[0])
                episodes = self._collect(ready[0], w, step)
                if episodes is not None:
                    done[shard.offset] = episodes
                    continue
                tries[shard.offset] += 1
                if tries[shard.offset] > self.cfg.max_restarts + len(self.workers):
                    raise RolloutPoolError(f"step {step}: prompts {shard.offset}.. failed on {tries[shard.offset]} "
                                           "tries (workers keep dying): see the Ray worker logs")
                report.reissued_prompts += len(shard.samples)
                target = self._pick(inflight.values(), deadline)
                inflight[self._issue(target, shard, root)] = (shard, target)
        finally:
            self.rolling_step = None
        return [ep for offset in sorted(done) for ep in done[offset]], report

    def _issue(self, w: _Worker, shard: Shard, root: str):
        if w.stale and self.weights is not None:  # runs before the shard: an actor runs its calls in order
            w.actor.load_weights.remote(self.weights, self.version)
        w.stale = False
        return w.actor.run.remote(shard.samples, root, shard.seed)

    def _collect(self, ref, w: _Worker, step: int) -> list[Episode] | None:
        """The shard's episodes, or None when ``w`` died or answered with another policy version."""
        try:
            episodes = ray.get(ref)
        except WORKER_LOST as e:
            self._lose(w, e, f"step {step}")
            return None
        wrong = {ep.policy_version for ep in episodes} - {self.version}
        if wrong:  # restarted between our calls: its engine was back on the start weights
            self._lose(w, RuntimeError(f"policy version {sorted(wrong)} != {self.version}"), f"step {step}")
            return None
        return episodes

    def _lose(self, w: _Worker, err: Exception, when: str) -> None:
        """Count ``w`` lost (once per death: calls to it while it restarts fail too) and probe it."""
        if w.probe is not None:
            return
        w.losses, w.stale, w.probe = w.losses + 1, True, w.actor.pid.remote()
        self.report.workers_lost += 1
        log.warning("rollout worker %d lost at %s (%s: %s); Ray restarts it (rollout.max_restarts=%d) and its "
                    "unfinished prompts go to another worker with the same seeds", w.index, when,
                    type(err).__name__, (str(err).splitlines() or [""])[0], self.cfg.max_restarts)

    def _up(self, w: _Worker) -> bool:
        """Whether ``w`` answers (not restarting); looks at its probe without waiting."""
        if w.probe is None:
            return True
        if not ray.wait([w.probe], timeout=0)[0]:
            return False
        try:
            ray.get(w.probe)
            w.probe = None
            return True
        except RESTARTING:
            w.probe = w.actor.pid.remote()
        except WORKER_LOST as e:  # dead for good: its restarts are used up
            log.warning("rollout worker %d is gone for good (%s, rollout.max_restarts=%d): removed", w.index,
                        type(e).__name__, self.cfg.max_restarts)
            self.workers.remove(w)
            w.group.shutdown()
            if not self.workers:
                raise RolloutPoolError("every rollout worker is gone (each died more than rollout.max_restarts="
                                       f"{self.cfg.max_restarts} times): see the Ray worker logs") from e
        return False

    def _pick(self, inflight, deadline: float) -> _Worker:
        """The worker with the fewest shards in flight among those up, fresh ones first; waits
        (until ``deadline``) while every worker restarts."""
        busy = [w for _, w in inflight]
        while not (up := [w for w in list(self.workers) if self._up(w)]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no rollout worker back from a restart within rollout.step_timeout_s="
                                   f"{self.cfg.step_timeout_s:g} s: see the Ray worker logs")
            time.sleep(0.2)
        return min(up, key=lambda w: (w.stale, busy.count(w), w.index))

    def _deadline(self) -> float:
        return time.monotonic() + self.cfg.step_timeout_s

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _late(self, step: int, inflight) -> str:
        late = ", ".join(f"worker {w.index}: prompts {s.offset}..{s.offset + len(s.samples) - 1}" for s, w in inflight)
        return (f"step {step}: rollouts not back within rollout.step_timeout_s={self.cfg.step_timeout_s:g} s "
                f"({late}); raise rollout.step_timeout_s or see the Ray worker logs")

    def _gather(self, refs: list, what: str) -> list:
        try:
            return ray.get(refs, timeout=self.cfg.step_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{what}: not back within rollout.step_timeout_s={self.cfg.step_timeout_s:g} s") from None

    def shutdown(self) -> None:
        for w in self.workers:
            w.group.shutdown()
        self.workers = []
