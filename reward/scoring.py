"""Scoring a batch: judge the final answers (grouped by judge), charge the crops, compose R.

A :class:`RewardRequest` is the part of an Episode that the reward needs (no images, no tokens),
so it crosses process and HTTP boundaries cheaply. ``score_episodes`` is the in-process path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from awares_rl.core.episode import Episode, RewardParts
from reward.config import RewardConfig
from reward.crop_cost import compose_reward, crop_cost, format_reward
from reward.judges import get_judge
from reward.llm_judge import llm_judge_with_sources

NO_ANSWER = "none (no final answer)"
REMOTE_JUDGES = frozenset({"llm_judge"})  # judges that wait on a network endpoint
_NONE = type(None)
_OPTIONAL_TYPES = {
    "prediction": (str, _NONE),
    "metric": (str, _NONE),
    "needs_high_res": (bool, _NONE),
    "invalid_tool_call": (str, _NONE),
}


@dataclass(frozen=True)
class RewardRequest:
    """What one episode is scored on."""

    prediction: str | None  # the final answer; None = the episode ended without one (R_ans = 0)
    references: list[str]  # accepted answers, at least one
    metric: str | None = None  # the sample's metric name, mapped to a judge by RewardConfig
    needs_high_res: bool | None = None  # None = unknown, charged as False
    crop_ids: list[int] = field(default_factory=list)  # crops taken (empty = none)
    invalid_tool_call: str | None = None  # ToolCallError reason for a malformed call

    @classmethod
    def from_episode(cls, ep: Episode) -> RewardRequest:
        return cls(
            ep.final_answer,
            list(ep.answers),
            ep.metric,
            ep.needs_high_res,
            list(ep.crop_ids),
            ep.invalid_tool_call,
        )

    @classmethod
    def from_dict(cls, item: Mapping, where: str = "request") -> RewardRequest:
        """Build from a plain dict, raising ValueError that names ``where`` and the bad key."""
        allowed = {
            "prediction",
            "references",
            "metric",
            "needs_high_res",
            "crop_ids",
            "invalid_tool_call",
        }
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        for key, types in _OPTIONAL_TYPES.items():
            if not isinstance(item.get(key), types):
                raise ValueError(
                    f"{where}.{key} must be {types[0].__name__} or null, got {item[key]!r}"
                )
        refs = item.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{where}.references must be a non-empty list of str, got {refs!r}")
        crops = item.get("crop_ids") or []
        if not isinstance(crops, list) or not all(type(c) is int and 0 <= c <= 8 for c in crops):
            raise ValueError(f"{where}.crop_ids must be a list of ints in 0..8, got {crops!r}")
        return cls(
            item.get("prediction"),
            list(refs),
            item.get("metric"),
            item.get("needs_high_res"),
            list(crops),
            item.get("invalid_tool_call"),
        )


def judge_kwargs(name: str, cfg: RewardConfig) -> dict:
    """Keyword arguments the config gives judge ``name``."""
    if name == "embedding_cosine":
        return {
            "model_path": cfg.embedding_model,
            "batch_size": cfg.batch_size,
            "backend": cfg.embedding_backend,
        }
    if name != "llm_judge":
        return {}
    fallback = None
    if cfg.llm_fallback is not None:
        fallback = functools.partial(
            get_judge(cfg.llm_fallback), **judge_kwargs(cfg.llm_fallback, cfg)
        )
    return {
        "base_url": cfg.llm_base_url,
        "model": cfg.llm_model,
        "api_key_env": cfg.llm_api_key_env,
        "prompt_template": cfg.llm_prompt_template,
        "timeout_s": cfg.llm_timeout_s,
        "deadline_s": cfg.llm_deadline_s,
        "max_retries": cfg.llm_max_retries,
        "fallback": fallback,
        "fallback_name": cfg.llm_fallback or "fallback",
    }


def uses_remote_judge(requests: Sequence[RewardRequest], cfg: RewardConfig) -> bool:
    """Whether scoring ``requests`` calls a remote judge (one that waits on the network), so the
    HTTP front can keep such batches off the threads that serve the local judges."""
    return any(
        cfg.judge_for(r.metric) in REMOTE_JUDGES for r in requests if r.prediction is not None
    )


def run_judge(
    name: str, predictions: list[str], references: list[list[str]], cfg: RewardConfig
) -> tuple[list[float], list[str]]:
    """Scores from judge ``name`` and the judge that produced each (a fallback names itself)."""
    kwargs = judge_kwargs(name, cfg)
    if name == "llm_judge":
        return llm_judge_with_sources(predictions, references, **kwargs)
    judge: Callable[..., list[float]] = get_judge(name)
    return judge(predictions, references, **kwargs), [name] * len(predictions)


def judge_batch(
    predictions: Sequence[str | None], references: Sequence[Sequence[str]], judges: Sequence[str],
    cfg: RewardConfig,
) -> tuple[list[float], list[str]]:
    """The one batched scorer of trajectories, GRPO and eval: item i scored by judge ``judges[i]``
    (the stage's ``route_judge``), one call per judge name; no prediction scores 0 (``NO_ANSWER``).
    Returns the scores and the judge that produced each (a fallback names itself)."""
    scores, sources = [0.0] * len(predictions), [NO_ANSWER] * len(predictions)
    by_judge: dict[str, list[int]] = {}
    for i, (pred, name) in enumerate(zip(predictions, judges, strict=True)):
        if pred is not None:
            by_judge.setdefault(name, []).append(i)
    for name, idx in by_judge.items():
        got, src = run_judge(name, [predictions[i] for i in idx], [list(references[i]) for i in idx], cfg)
        for i, s, j in zip(idx, got, src, strict=True):
            scores[i], sources[i] = float(s), j
    return scores, sources


def answer_scores(
    requests: Sequence[RewardRequest], cfg: RewardConfig
) -> tuple[list[float], list[str]]:
    """R_ans per request (0 without a final answer): ``judge_batch`` with the reward's routing."""
    return judge_batch([r.prediction for r in requests], [r.references for r in requests],
                       [cfg.judge_for(r.metric) for r in requests], cfg)


def score_requests(requests: Sequence[RewardRequest], cfg: RewardConfig) -> list[RewardParts]:
    """RewardParts per request: R = w_ans * R_ans - C_tool + format."""
    answers, sources = answer_scores(requests, cfg)
    parts = []
    for req, ans, src in zip(requests, answers, sources, strict=True):
        cost = crop_cost(req.needs_high_res, req.crop_ids, cfg.alpha_miss, cfg.alpha_use, cfg.lam)
        fmt = format_reward(req.invalid_tool_call, cfg.format_penalty)
        parts.append(RewardParts(ans, cost, fmt, compose_reward(ans, cost, fmt, cfg.w_ans), src))
    return parts


def score_episodes(episodes: Sequence[Episode], cfg: RewardConfig) -> list[RewardParts]:
    """Score episodes in-process and set each ``ep.reward``; returns the RewardParts in order."""
    return set_rewards(episodes, score_requests([RewardRequest.from_episode(ep) for ep in episodes], cfg))


def set_rewards(episodes: Sequence[Episode], parts: list[RewardParts]) -> list[RewardParts]:
    """Set each ``ep.reward`` to its RewardParts (one each, in order); returns ``parts``."""
    for ep, p in zip(episodes, parts, strict=True):
        ep.reward = p
    return parts
