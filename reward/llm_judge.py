"""LLM-as-judge over an OpenAI-compatible chat-completions endpoint (e.g. ``vllm serve``).

Each prediction is one request (``temperature=0``) built from ``prompt_template``; the reply is
parsed to a score in [0, 1] by :func:`parse_judge_score`. Network failures and HTTP 429/5xx are
retried ``max_retries`` times with exponential backoff, each try bounded by ``timeout_s``. Once
one item exhausts its retries the endpoint counts as down: the remaining items of the batch are
not sent, and the whole batch raises :class:`LLMJudgeError` or, when a ``fallback`` judge is
given, is scored by it (logged, and named in the per-item sources). Never hangs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from reward.validate import check_batch

log = logging.getLogger(__name__)

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
    """One chat-completions endpoint with bounded retries and a shared "it is down" flag."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        max_retries: int,
        backoff_s: float,
        max_tokens: int,
        extra_body: dict | None,
    ) -> None:
        self.client, self.url = client, base_url.rstrip("/")
        self.attempts, self.backoff_s = max_retries + 1, backoff_s
        self.body = {"temperature": 0.0, "max_tokens": max_tokens, **(extra_body or {})}
        self.down = threading.Event()
        self.error: BaseException | None = None
        self.model = ""

    def _call(self, fn: Callable[[], str]) -> str:
        if self.down.is_set():
            raise LLMJudgeError("endpoint already marked down in this batch")
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            reraise=True,
            retry=retry_if_exception(_retryable),
            wait=wait_exponential(multiplier=self.backoff_s, max=8 * self.backoff_s),
        )
        try:
            return retrying(fn)
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
            self.error = e
            self.down.set()
            raise LLMJudgeError(str(e)) from e

    def _first_model_once(self) -> str:
        r = self.client.get(f"{self.url}/models")
        r.raise_for_status()
        return r.json()["data"][0]["id"]

    def first_model(self) -> str:
        return self._call(self._first_model_once)

    def _chat_once(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        r = self.client.post(
            f"{self.url}/chat/completions",
            json={"model": self.model, "messages": messages, **self.body},
        )
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"] or ""

    def chat(self, prompt: str) -> str:
        return self._call(lambda: self._chat_once(prompt))


def _down_message(url: str, attempts: int, timeout_s: float, error: BaseException | None) -> str:
    return (
        f"LLM judge at {url} failed (at most {attempts} attempt(s) of {timeout_s:g} s each) "
        f"({type(error).__name__}: {error}); start the endpoint (e.g. `vllm serve MODEL`), fix "
        "reward.llm_base_url, or set reward.llm_fallback to a local judge"
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
) -> tuple[list[float], list[str]]:
    """Scores and, per item, the judge that produced each (``"llm_judge"`` or the fallback's).

    ``model=""`` asks the endpoint's ``/models`` for its first model. ``fallback`` (a judge
    function) scores the batch when the endpoint is down, and items whose reply is unreadable;
    without it, a down endpoint raises LLMJudgeError and an unreadable reply scores 0.0 (logged).
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
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        endpoint = _Endpoint(client, base_url, max_retries, backoff_s, max_tokens, extra_body)
        try:
            endpoint.model = model or endpoint.first_model()
            with ThreadPoolExecutor(min(max_concurrency, len(prompts))) as pool:
                replies = list(pool.map(endpoint.chat, prompts))
        except LLMJudgeError as e:
            message = _down_message(base_url, max_retries + 1, timeout_s, endpoint.error or e)
            if fallback is None:
                raise LLMJudgeError(message) from e
            log.warning(
                "%s; scoring %d item(s) with fallback judge %s",
                message,
                len(prompts),
                fallback_name,
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
