"""The scorer a training stage uses: the local Ray pool, or a running reward service over HTTP.

    scorer = make_scorer(cfg.reward)          # RewardPool, or RemoteScorer when reward.remote_url is set
    scorer.score_episodes(episodes)           # sets ep.reward, keeps the order
    scorer.shutdown()

:class:`RemoteScorer` sends ``batch_size`` items a request to ``awares-rl serve-reward`` (its
bearer token from ``$token_env``, the variable the service reads), retries network errors,
timeouts, 429/502/503 ``remote_retries`` times with exponential back-off (``RewardClient``), and
never outlives ``timeout_s`` over one call's batches and tries: an endpoint that is down or slow
stops the caller with a ``RewardClientError`` naming the URL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from awares_rl.core.episode import Episode, RewardParts
from reward.client import RewardClient
from reward.config import RewardConfig
from reward.scoring import set_rewards
from reward.service import Item, RewardPool, to_requests


class EpisodeScorer(Protocol):
    """What GRPO, eval and sweeps need of a reward back-end."""

    def score_episodes(self, episodes: Sequence[Episode]) -> list[RewardParts]: ...

    def shutdown(self) -> None: ...


class RemoteScorer:
    """``awares-rl serve-reward`` at ``cfg.remote_url`` as a scorer (see the module docstring)."""

    def __init__(self, cfg: RewardConfig, check: bool = True) -> None:
        """``check``: ask the service's ``/health`` now, so a wrong URL fails before the first step."""
        if cfg.remote_url is None:
            raise ValueError("RemoteScorer needs reward.remote_url (the base URL of `awares-rl serve-reward`)")
        self.cfg = cfg
        self.client = RewardClient(cfg.remote_url, token_env=cfg.token_env, timeout_s=cfg.remote_request_timeout_s,
                                   max_retries=cfg.remote_retries, backoff_s=cfg.remote_backoff_s,
                                   deadline_s=cfg.timeout_s)
        if check:
            self.client.health()

    def score(self, items: Sequence[Item]) -> list[RewardParts]:
        """RewardParts per item, in order: ``batch_size`` a request, all within ``timeout_s``."""
        requests, size = to_requests(items), self.cfg.batch_size
        end = time.monotonic() + self.cfg.timeout_s
        return [p for i in range(0, len(requests), size) for p in self.client.score(requests[i:i + size], end)]

    def score_episodes(self, episodes: Sequence[Episode]) -> list[RewardParts]:
        """Score episodes over HTTP and set each ``ep.reward``."""
        return set_rewards(episodes, self.score(list(episodes)))

    def shutdown(self) -> None:
        self.client.close()


def make_scorer(cfg: RewardConfig, warmup: bool = True) -> EpisodeScorer:
    """The reward back-end ``cfg`` asks for: a :class:`RemoteScorer` when ``reward.remote_url`` is
    set, else a local ``RewardPool`` of ``reward.num_workers`` Ray actors (Ray must be up).
    ``warmup``: load the judges (pool) or check ``/health`` (remote) now."""
    if cfg.remote_url is not None:
        return RemoteScorer(cfg, check=warmup)
    return RewardPool(cfg, warmup=warmup)
