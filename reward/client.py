"""HTTP client for the reward service: bounded retries with exponential backoff, clear errors.

    with RewardClient("http://127.0.0.1:8008") as client:   # token from $AWARES_REWARD_TOKEN
        parts = client.score_episodes(episodes)

Network errors and 429/502/503 are retried ``max_retries`` times (waits ``backoff_s * 2**k``,
capped at 8x); 401/403/408/413/422/500/504 are not (the same request would fail again) and raise
:class:`RewardClientError` saying what to change. A call never outlives ``deadline_s`` (wall clock,
all tries), even against a server that drips its answer.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from awares_rl.core.episode import Episode, RewardParts
from reward.scoring import RewardRequest, set_rewards

RETRY_STATUS = frozenset({429, 502, 503})
_HINTS = {
    401: "the server wants a bearer token: set AWARES_REWARD_TOKEN (or pass token=)",
    403: "the server refused the token: use the token the server was started with",
    408: "the server did not receive the whole body within reward.body_timeout_s",
    413: "the request body is too large: send fewer items a request",
    422: "the request does not match the schema",
    504: "scoring timed out on the server: send fewer items or raise reward.request_timeout_s",
}


class RewardClientError(RuntimeError):
    """The reward service refused or failed a request; ``status`` is the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DeadlineError(Exception):
    """The whole call outlived ``deadline_s`` (not retried)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in RETRY_STATUS
    return isinstance(exc, httpx.TransportError)


def _error(exc: httpx.HTTPError, url: str, attempts: int) -> RewardClientError:
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        try:
            detail = exc.response.json().get("detail")
        except ValueError:
            detail = exc.response.text[:500]
        hint = _HINTS.get(status, "see the reward service's log")
        return RewardClientError(f"{url} -> HTTP {status}: {hint}; server said: {detail}", status)
    if isinstance(exc, httpx.TimeoutException):
        return RewardClientError(
            f"{url} did not answer in time ({attempts} attempt(s) at most, last: {type(exc).__name__}); "
            "the service is overloaded or hung: send fewer items (reward.batch_size) or raise "
            "reward.remote_request_timeout_s / reward.timeout_s"
        )
    return RewardClientError(
        f"{url} unreachable after {attempts} attempt(s) ({type(exc).__name__}: {exc}); is "
        "`awares-rl serve-reward` running there?"
    )


class RewardClient:
    """Talks to ``awares-rl serve-reward``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8008",
        token: str | None = None,
        token_env: str = "AWARES_REWARD_TOKEN",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        deadline_s: float = 300.0,
    ) -> None:
        token = token or os.environ.get(token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self.attempts, self.backoff_s, self.deadline_s = max_retries + 1, backoff_s, deadline_s
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: dict | None = None, end: float | None = None) -> Any:
        # httpx's timeout bounds each network wait; a server that drips its answer resets it with
        # every chunk, so the whole call (all tries) also has a wall-clock deadline: deadline_s, or
        # the earlier ``end`` (time.monotonic()) of a caller that splits one job into requests
        end = min(time.monotonic() + self.deadline_s, end if end is not None else math.inf)

        def once() -> Any:
            left = end - time.monotonic()
            if left <= 0:
                raise DeadlineError(f"no time left for {method} {path}")
            with self.http.stream(method, path, json=body, timeout=min(self.timeout_s, left)) as r:
                chunks = []
                for chunk in r.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > end:
                        raise DeadlineError(f"no complete answer within deadline_s={self.deadline_s:g} s "
                                            f"(waiting for {method} {path})")
            full = httpx.Response(r.status_code, headers=r.headers, content=b"".join(chunks), request=r.request)
            full.raise_for_status()
            return full.json()

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(max(end - time.monotonic(), 0)),
            wait=wait_exponential(multiplier=self.backoff_s, max=8 * self.backoff_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            return retrying(once)
        except DeadlineError as e:
            raise RewardClientError(f"{self.base_url + path}: {e} (deadline {self.deadline_s:g} s); raise "
                                    "deadline_s (reward.timeout_s) or send fewer items") from e
        except httpx.HTTPError as e:
            raise _error(e, self.base_url + path, self.attempts) from e

    def health(self) -> dict:
        return self._request("GET", "/health")

    def score(self, items: Sequence[RewardRequest | Mapping], end: float | None = None) -> list[RewardParts]:
        """RewardParts for each item (RewardRequest or a dict of its fields), in order; ``end``
        (time.monotonic()) bounds the call when it comes before ``deadline_s``."""
        payload = [asdict(i) if isinstance(i, RewardRequest) else dict(i) for i in items]
        results = self._request("POST", "/score", {"items": payload}, end)["results"]
        if len(results) != len(payload):
            raise RewardClientError(f"{self.base_url}/score answered {len(results)} results for "
                                    f"{len(payload)} items: is it an `awares-rl serve-reward`?")
        return [RewardParts(**r) for r in results]

    def score_episodes(self, episodes: Sequence[Episode]) -> list[RewardParts]:
        """Score episodes remotely and set each ``ep.reward``."""
        return set_rewards(episodes, self.score([RewardRequest.from_episode(ep) for ep in episodes]))

    def openrlhf(
        self, query: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[object]
    ) -> dict:
        """The OpenRLHF remote-reward call: ``{"rewards", "scores", "extra_logs"}``."""
        body = {"query": list(query), "prompts": None if prompts is None else list(prompts)}
        return self._request("POST", "/openrlhf", body | {"labels": list(labels)})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
