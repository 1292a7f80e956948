"""RewardService (one process, batched) and RewardPool (an ActorGroup of N of it, fanned out).

    pool = RewardPool(RewardConfig(num_workers=2))        # after ray.init()
    parts = pool.score_episodes(episodes)                 # sets ep.reward, keeps the order

Only :class:`~reward.scoring.RewardRequest` records travel to the actors (never images or
tokens); a batch is split into at most ``batch_size`` items a call and spread round-robin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from awares_rl.core.episode import Episode, RewardParts
from cluster.actor_group import ActorGroup, DistInfo
from reward.config import RewardConfig
from reward.scoring import RewardRequest, score_requests, set_rewards

log = logging.getLogger(__name__)

Item = RewardRequest | Mapping | Episode


def to_requests(items: Sequence[Item]) -> list[RewardRequest]:
    """Episodes, plain dicts or RewardRequests -> RewardRequests (dicts validated, errors name
    ``items[i]``)."""
    if isinstance(items, (str, Mapping)):
        raise ValueError("items must be a list of requests, episodes or dicts, not a single one")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, RewardRequest):
            out.append(item)
        elif isinstance(item, Episode):
            out.append(RewardRequest.from_episode(item))
        elif isinstance(item, Mapping):
            out.append(RewardRequest.from_dict(item, where=f"items[{i}]"))
        else:
            raise ValueError(
                f"items[{i}] is a {type(item).__name__}: pass a RewardRequest, an "
                "Episode or a dict with prediction/references/..."
            )
    return out


def judges_in_use(cfg: RewardConfig) -> set[str]:
    """Every judge name the config can route a sample to (fallback included)."""
    names = {cfg.judge, *cfg.metric_judges.values()}
    return names | ({cfg.llm_fallback} if cfg.llm_fallback else set())


class RewardService:
    """Scores batches in this process. ``RewardPool`` runs it as a Ray actor."""

    def __init__(self, cfg: RewardConfig, num_threads: int | None = None,
                 dist: DistInfo | None = None) -> None:
        """``dist`` (given by ActorGroup) is ignored: the scorers form no process group."""
        self.cfg = cfg
        self.num_threads = num_threads
        self.scored = 0

    def warmup(self) -> dict[str, Any]:
        """Load what the judges need now (the embedding model), so the first batch is not slow."""
        if "embedding_cosine" in judges_in_use(self.cfg):
            import torch

            from reward.embedding import load_encoder

            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            load_encoder(self.cfg.embedding_model, self.cfg.embedding_backend)
        return self.health()

    def score(self, items: Sequence[Item]) -> list[RewardParts]:
        """RewardParts for each item, in order (see reward.scoring.score_requests)."""
        parts = score_requests(to_requests(items), self.cfg)
        self.scored += len(parts)
        return parts

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "judge": self.cfg.judge, "scored": self.scored}


class RewardPool:
    """``cfg.num_workers`` RewardService actors (an ActorGroup with free placement), each
    reserving ``cfg.cpus_per_worker`` CPUs."""

    def __init__(self, cfg: RewardConfig, warmup: bool = True) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError(
                "RewardPool needs Ray: call ray.init() (or ray.init(address=...)) first"
            )
        threads = max(1, math.floor(cfg.cpus_per_worker))
        # free placement: never captured into a caller's placement group (a Ray Tune trial's)
        self.cfg = cfg
        self.group = ActorGroup(
            RewardService, cfg.num_workers, cfg, threads, cpus_per_actor=cfg.cpus_per_worker,
            placement="free", max_restarts=2, max_task_retries=2, call_timeout_s=cfg.timeout_s,
        )
        if warmup:  # fail fast here (a missing model) rather than on the first batch
            self.group.call("warmup")

    @property
    def actors(self) -> list:
        """The RewardService actor handles."""
        return self.group.actors

    def _chunks(self, requests: list[RewardRequest]) -> list[list[RewardRequest]]:
        n_chunks = min(
            len(requests), max(self.group.num_actors, math.ceil(len(requests) / self.cfg.batch_size))
        )
        size = math.ceil(len(requests) / max(n_chunks, 1))
        return [requests[i : i + size] for i in range(0, len(requests), size)]

    def score(self, items: Sequence[Item]) -> list[RewardParts]:
        """Split into chunks, one actor call each (round-robin), gather in the original order."""
        if not items:
            return []
        try:
            results = self.group.call_chunks("score", self._chunks(to_requests(items)))
        except TimeoutError as e:
            raise TimeoutError(f"reward pool: {e}; raise reward.timeout_s, or reward.num_workers / "
                               "reward.cpus_per_worker") from None
        return [p for chunk_parts in results for p in chunk_parts]

    def score_episodes(self, episodes: Sequence[Episode]) -> list[RewardParts]:
        """Score episodes on the actors and set each ``ep.reward``."""
        return set_rewards(episodes, self.score(list(episodes)))

    def health(self) -> dict[str, Any]:
        states = self.group.call("health")
        return {
            "status": "ok",
            "judge": self.cfg.judge,
            "workers": len(states),
            "scored": sum(s["scored"] for s in states),
        }

    def shutdown(self) -> None:
        self.group.shutdown()
