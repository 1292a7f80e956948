"""LLM-as-judge over an OpenAI-compatible chat-completions endpoint (e.g. ``vllm serve``).

Each prediction is one request (``temperature=0``) built from ``prompt_template``; the reply is
parsed to a score in [0, 1] by :func:`parse_judge_score`. Network failures and HTTP 429/5xx are
retried ``max_retries`` times with exponential backoff; ``timeout_s`` bounds each network wait
(connect, each read), and ``deadline_s`` bounds the whole call in wall-clock time (a reply that
drips one byte a second resets ``timeout_s`` on every byte, but not the deadline). Once one item
exhausts its retries, or the deadline passes, the endpoint counts as down: the remaining requests
are cancelled, and the whole batch raises :class:`LLMJudgeError` or, when a ``fallback`` judge is
given, is scored by it (logged, and named in the per-item sources). Never hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from reward.validate import check_batch

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PROMPT = (
    "You grade answers to questions about an image.\n"
    "Reference answer(s): {references}\n"
    "Candidate answer: {prediction}\n"
    "Does the candidate answer mean the same as a reference answer? Reply with yes or no only."
)

_THINK = re.compile(r"<think>.*?</think>", re.S)
_NUM = r"[-+]?\d+(?:\.\d+)?"
_SCORE = re.compile(rf"\b(?:score|rating|grade)\b\s*(?:[:=]|is)?\s*({_NUM})(?:\s*/\s*({_NUM}))?")
_BARE = re.compile(rf"^({_NUM})(?:\s*/\s*({_NUM}))?$")
_VERDICT = re.compile(r"^\W*(yes|no|true|false|correct|incorrect|right|wrong)\b")
_POSITIVE = {"yes", "true", "correct", "right"}


class LLMJudgeError(RuntimeError):
    """The judge endpoint failed (down, slow, or refused) after the bounded retries."""


class LLMJudgeDeadlineError(LLMJudgeError):
    """The judge call ran past its wall-clock deadline (its requests were cancelled)."""


def _ratio(value: str, denominator: str | None) -> float | None:
    v = float(value)
    if denominator is not None:
        d = float(denominator)
        return min(max(v / d, 0.0), 1.0) if d > 0 else None
    return v if 0.0 <= v <= 1.0 else None


def parse_judge_score(reply: str) -> float | None:
    """A judge reply -> score in [0, 1], or None when it cannot be read.

    ``"Yes."`` / ``"correct"`` / ``"true"`` -> 1.0; ``"No"`` / ``"incorrect"`` -> 0.0 (first word);
    ``"1"`` / ``"0"`` / ``"0.8"`` -> that value; ``"8/10"`` -> 0.8; ``"Score: 0.8"`` and
    ``"rating = 4/5"`` / ``"the score is 0.8"`` anywhere -> 0.8. A ``<think>...</think>`` block is ignored. A bare number
    outside [0, 1] with no denominator is ambiguous -> None.
    """
    text = _THINK.sub("", reply).strip().lower()
    m = _BARE.match(text.rstrip("."))
    if m:
        return _ratio(m[1], m[2])
    m = _VERDICT.match(text)
    if m:
        return 1.0 if m[1] in _POSITIVE else 0.0
    m = _SCORE.search(text)
    return _ratio(m[1], m[2]) if m else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class _Endpoint:
    """One chat-completions endpoint: bounded retries, at most ``max_concurrency`` requests in
    flight, and a shared "it is down" flag that stops the requests not yet sent."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        max_retries: int,
        backoff_s: float,
        max_tokens: int,
        extra_body: dict | None,
        max_concurrency: int,
    ) -> None:
        self.client, self.url = client, base_url.rstrip("/")
        self.attempts, self.backoff_s = max_retries + 1, backoff_s
        self.body = {"temperature": 0.0, "max_tokens": max_tokens, **(extra_body or {})}
        self.slots = asyncio.Semaphore(max_concurrency)
        self.down = False
        self.error: BaseException | None = None
        self.model = ""
        self.replies = 0  # chat completions answered so far (the deadline error reports it)

    async def _call(self, fn: Callable[..., Awaitable[str]], *args: str) -> str:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            reraise=True,
            retry=retry_if_exception(_retryable),
            wait=wait_exponential(multiplier=self.backoff_s, max=8 * self.backoff_s),
        )
        async with self.slots:
            if self.down:
                raise LLMJudgeError("endpoint already marked down in this batch")
            try:
                return await retrying(fn, *args)
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
                self.error, self.down = e, True
                raise LLMJudgeError(str(e)) from e

    async def _first_model_once(self) -> str:
        r = await self.client.get(f"{self.url}/models")
        r.raise_for_status()
        return r.json()["data"][0]["id"]

    async def first_model(self) -> str:
        return await self._call(self._first_model_once)

    async def _chat_once(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        r = await self.client.post(
            f"{self.url}/chat/completions",
            json={"model": self.model, "messages": messages, **self.body},
        )
        r.raise_for_status()
        reply = r.json()["choices"][0]["message"]["content"] or ""
        self.replies += 1
        return reply

    async def chat(self, prompt: str) -> str:
        return await self._call(self._chat_once, prompt)


async def _gather_or_cancel(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """``asyncio.gather`` that cancels (and awaits) the other tasks once one fails."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ask_all(
    endpoint: _Endpoint, model: str, prompts: list[str], deadline_s: float
) -> list[str]:
    """Every prompt's reply, the whole exchange (model lookup, retries, backoff) within
    ``deadline_s`` of wall-clock time; past it raises LLMJudgeDeadlineError."""

    async def ask() -> list[str]:
        endpoint.model = model or await endpoint.first_model()
        return await _gather_or_cancel([endpoint.chat(p) for p in prompts])

    try:
        async with endpoint.client:
            return await asyncio.wait_for(ask(), deadline_s)
    except asyncio.TimeoutError:
        waited = (
            f"GET {endpoint.url}/models"
            if not endpoint.model
            else (
                f"POST {endpoint.url}/chat/completions ({endpoint.replies}/{len(prompts)} replies in)"
            )
        )
        error = LLMJudgeDeadlineError(
            f"no answer within deadline_s = {deadline_s:g} s, waiting for {waited}"
        )
        endpoint.error, endpoint.down = error, True
        raise error from None


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code (in a helper thread if this thread already runs
    an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="llm-judge") as pool:
        return pool.submit(asyncio.run, coro).result()


def _down_message(
    url: str, attempts: int, timeout_s: float, deadline_s: float, error: BaseException | None
) -> str:
    return (
        f"LLM judge at {url} failed (at most {attempts} attempt(s), each network wait bounded by "
        f"{timeout_s:g} s, the whole call by {deadline_s:g} s) ({type(error).__name__}: {error}); "
        "start the endpoint (e.g. `vllm serve MODEL`), fix reward.llm_base_url, raise "
        "reward.llm_deadline_s, or set reward.llm_fallback to a local judge"
    )


def llm_judge_with_sources(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    base_url: str = "http://127.0.0.1:8000/v1",
    model: str = "",
    api_key_env: str | None = "OPENAI_API_KEY",
    prompt_template: str = DEFAULT_PROMPT,
    timeout_s: float = 30.0,
    max_retries: int = 2,
    backoff_s: float = 0.5,
    fallback: Callable[..., list[float]] | None = None,
    fallback_name: str = "fallback",
    max_concurrency: int = 8,
    max_tokens: int = 16,
    extra_body: dict | None = None,
    deadline_s: float = 60.0,
) -> tuple[list[float], list[str]]:
    """Scores and, per item, the judge that produced each (``"llm_judge"`` or the fallback's).

    ``model=""`` asks the endpoint's ``/models`` for its first model. ``fallback`` (a judge
    function) scores the batch when the endpoint is down or past ``deadline_s``, and items whose
    reply is unreadable; without it, a down endpoint raises LLMJudgeError (LLMJudgeDeadlineError
    past the deadline) and an unreadable reply scores 0.0 (logged).
    """
    check_batch(predictions, references)
    if not predictions:
        return [], []
    prompts = [
        prompt_template.format(prediction=p, references=" | ".join(refs))
        for p, refs in zip(predictions, references, strict=True)
    ]
    key = os.environ.get(api_key_env) if api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.AsyncClient(timeout=timeout_s, headers=headers)
    endpoint = _Endpoint(
        client, base_url, max_retries, backoff_s, max_tokens, extra_body, max_concurrency
    )
    try:
        replies = _run_blocking(_ask_all(endpoint, model, prompts, deadline_s))
    except LLMJudgeError as e:
        message = _down_message(
            base_url, max_retries + 1, timeout_s, deadline_s, endpoint.error or e
        )
        if fallback is None:
            raise type(e)(message) from e
        log.warning(
            "%s; scoring %d item(s) with fallback judge %s", message, len(prompts), fallback_name
        )
        return fallback(predictions, references), [f"{fallback_name} (llm_judge down)"] * len(
            prompts
        )
    return _read_replies(replies, predictions, references, fallback, fallback_name)


def _read_replies(
    replies: list[str],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    fallback: Callable[..., list[float]] | None,
    fallback_name: str,
) -> tuple[list[float], list[str]]:
    parsed = [parse_judge_score(r) for r in replies]
    bad = [i for i, s in enumerate(parsed) if s is None]
    scores = [0.0 if s is None else s for s in parsed]
    sources = ["llm_judge"] * len(replies)
    if bad:
        log.warning("LLM judge: %d unreadable reply(ies), e.g. %r", len(bad), replies[bad[0]][:200])
    if bad and fallback is not None:
        fixed = fallback([predictions[i] for i in bad], [references[i] for i in bad])
        for i, s in zip(bad, fixed, strict=True):
            scores[i], sources[i] = s, f"{fallback_name} (llm_judge reply unreadable)"
    else:
        for i in bad:
            sources[i] = "llm_judge (unreadable reply: 0)"
    return scores, sources


def llm_judge(
    predictions: Sequence[str], references: Sequence[Sequence[str]], **kw: object
) -> list[float]:
    """The judge contract over :func:`llm_judge_with_sources` (same keyword arguments)."""
    return llm_judge_with_sources(predictions, references, **kw)[0]  # type: ignore[arg-type]
