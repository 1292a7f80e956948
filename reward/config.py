"""RewardConfig: the judge, the crop-cost weights, the workers and the HTTP front, validated.

R = w_ans * R_ans - C_tool + format, with C_tool = alpha_miss | alpha_use + lam * |C| | 0
(see reward/crop_cost.py). The paper publishes no alpha/lambda values; the defaults are ours:

- ``alpha_miss = 0.5``: a needed crop that was skipped costs half a perfect answer. The semantic
  judge gives wrong-but-similar answers partial credit (cosine ~0.3-0.7), so the penalty must be
  large enough that answering a small-text question from the low-res view never pays.
- ``alpha_use = 0.05``, ``lam = 0.05``: one crop costs 0.10, two 0.15. Small against R_ans, so a
  needed crop is always worth it, but not zero, so a policy that could answer from the low-res
  view learns not to look (the paper's 72% no-crop after GRPO). Asymmetry is enforced:
  ``alpha_miss > alpha_use + lam`` (missing costs more than one unneeded crop).
- ``format_penalty = -0.5``: a malformed GET_CROPS turn is worse than any well-formed choice
  short of a needed-but-missed crop; it adds to C_tool (no crop was taken).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from awares_rl.core.config_io import ConfigError, apply_overrides, build
from reward.embedding import EMBEDDING_BACKENDS
from reward.judges import BENCHMARK_JUDGES, CORRECT_THRESHOLD, JUDGES, is_correct, route_judge
from reward.llm_judge import DEFAULT_PROMPT

_DEFAULT_TOKEN_ENV = "AWARES_REWARD_TOKEN"


@dataclass(frozen=True)
class RewardConfig:
    """How answers are judged and crops are charged, and how the service runs."""

    judge: str = "embedding_cosine"  # judge for samples whose metric has no entry in metric_judges
    # sample metric -> judge name, e.g. {"anls": "anls", "semantic": "embedding_cosine"}; empty =
    # the paper's reward (one judge for every sample). reward.judges.BENCHMARK_JUDGES has them all.
    metric_judges: dict[str, str] = field(default_factory=dict)
    # a judge score >= this is a right answer: trajectory labels (low-res wrong, full-res right),
    # GRPO's logged accuracy and eval all use it (R_ans itself is the score)
    correct_threshold: float = CORRECT_THRESHOLD
    w_ans: float = 1.0  # weight of R_ans
    alpha_miss: float = 0.5  # cost of answering without a crop when the sample needed high res
    alpha_use: float = 0.05  # fixed cost of calling GET_CROPS at all
    lam: float = 0.05  # cost per crop requested
    format_penalty: float = -0.5  # added (<= 0) when turn 1 was a malformed GET_CROPS call
    embedding_model: str | None = None  # local sentence-transformers dir; None = packaged MiniLM
    # what runs the embedding model: "torch", "torch-bf16" (scores within ~0.01, faster on a bf16
    # CPU), "onnx" (same scores, ONNX Runtime) or "onnx-int8" (fastest, scores off by up to
    # ~0.07); reward.embedding.EMBEDDING_BACKENDS
    embedding_backend: str = "torch"
    llm_base_url: str = "http://127.0.0.1:8000/v1"  # OpenAI-compatible endpoint (with /v1)
    llm_model: str = ""  # served model name; "" = the endpoint's first /v1/models entry
    llm_api_key_env: str | None = "OPENAI_API_KEY"  # env var holding the key (unset = no key)
    llm_prompt_template: str = DEFAULT_PROMPT  # needs {prediction} and {references}
    llm_timeout_s: float = 30.0  # bound on each network wait of a try (connect, each read)
    # wall-clock bound on one llm_judge call (model lookup, every item, retries, backoff): a reply
    # dripping a byte a second resets llm_timeout_s per byte, not this; past it -> fallback or 502
    llm_deadline_s: float = 60.0
    llm_max_retries: int = 2  # retries after the first try (network errors, 429, 5xx)
    llm_fallback: str | None = None  # judge used when the endpoint is down (None: raise)
    num_workers: int = 1  # RewardService Ray actors in the pool
    cpus_per_worker: float = 1.0  # CPUs each actor reserves (also its torch thread count)
    batch_size: int = 256  # items per actor call and per embedding forward pass
    host: str = "127.0.0.1"  # HTTP bind address (loopback unless you mean it)
    port: int = 8008
    token_env: str = _DEFAULT_TOKEN_ENV  # env var with the bearer token the HTTP front requires
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get 413
    request_timeout_s: float = 120.0  # scoring slower than this gets 504
    body_timeout_s: float = 10.0  # a request body not in full this long after its headers: 408
    # connections open at once; a request on one beyond this gets 503 (uvicorn limit_concurrency)
    max_connections: int = 64
    # a connection that sends no request this long after connecting or after a response is closed
    keep_alive_s: float = 5.0
    # GRPO (``make_scorer``) scores through a running `awares-rl serve-reward` at this base URL,
    # e.g. http://127.0.0.1:8008 (bearer token from $token_env, batch_size items a request),
    # instead of num_workers local Ray actors; null = the local pool
    remote_url: str | None = None
    remote_request_timeout_s: float = 60.0  # bound on each network wait of one try (connect, each read)
    remote_retries: int = 3  # retries after a network error, a timeout, 429, 502 or 503
    remote_backoff_s: float = 0.5  # wait before retry k: remote_backoff_s * 2**k, capped at 8x
    # the most one scoring call may take (all its batches and retries over HTTP; the wait on the
    # local pool's actors); past it the run stops with an error naming what it waited for
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in (
            "w_ans",
            "alpha_miss",
            "alpha_use",
            "lam",
            "llm_timeout_s",
            "request_timeout_s",
        ):
            self._require(getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("llm_deadline_s", "body_timeout_s", "keep_alive_s", "remote_request_timeout_s",
                     "timeout_s"):
            self._require(getattr(self, name) > 0, name, "must be > 0 (seconds)")
        self._require(self.format_penalty <= 0, "format_penalty", "must be <= 0 (it is a penalty)")
        self._require(
            self.alpha_miss > self.alpha_use + self.lam,
            "alpha_miss",
            f"must exceed alpha_use + lam = {self.alpha_use + self.lam:g} so that missing a needed "
            "crop costs more than one unneeded crop; raise alpha_miss or lower alpha_use/lam",
        )
        self._require(0 < self.correct_threshold <= 1, "correct_threshold",
                      "must be in (0, 1]: judge scores lie in [0, 1] (0.5 is the default)")
        self._check_judges()
        self._require(self.embedding_backend in EMBEDDING_BACKENDS, "embedding_backend",
                      f"choose one of {list(EMBEDDING_BACKENDS)} (torch is the reference)")
        for name in ("num_workers", "batch_size", "max_body_bytes", "max_connections"):
            self._require(getattr(self, name) >= 1, name, "must be >= 1")
        self._require(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        self._require(self.llm_max_retries >= 0, "llm_max_retries", "must be >= 0")
        self._require(self.remote_retries >= 0, "remote_retries", "must be >= 0")
        self._require(self.remote_backoff_s >= 0, "remote_backoff_s", "must be >= 0 (seconds)")
        url = self.remote_url
        self._require(url is None or (url.startswith(("http://", "https://")) and len(url) > 8), "remote_url",
                      "must be an http(s) base URL such as http://127.0.0.1:8008 (where `awares-rl "
                      "serve-reward` listens), or null for the local Ray pool")
        self._require(0 <= self.port <= 65535, "port", "must be in 0..65535")
        self._require(bool(self.token_env), "token_env", "must name an environment variable")
        try:
            self.llm_prompt_template.format(prediction="p", references="r")
        except (KeyError, IndexError, ValueError) as e:
            message = f"may use only {{prediction}} and {{references}} (write other braces as {{{{ }}}}): {e!r}"
            self._require(False, "llm_prompt_template", message)

    def _check_judges(self) -> None:
        known = f"choose one of {sorted(JUDGES)}"
        self._require(self.judge in JUDGES, "judge", known)
        for metric, name in self.metric_judges.items():
            if metric not in BENCHMARK_JUDGES:
                raise ValueError(f"reward.metric_judges: {metric!r} is not a sample metric; use "
                                 f"keys from {sorted(BENCHMARK_JUDGES)}")
            if name not in JUDGES:
                raise ValueError(
                    f"reward.metric_judges[{metric!r}]={name!r} is not a judge; {known}"
                )
        fallback = self.llm_fallback
        ok = fallback is None or (fallback in JUDGES and fallback != "llm_judge")
        self._require(ok, "llm_fallback", f"must be None or a local judge; {known}")

    def _require(self, ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ValueError(f"reward.{name}={getattr(self, name)!r}: {message}")

    def correct(self, score: float) -> bool:
        """``score`` is a right answer (``correct_threshold``; see ``reward.judges.is_correct``)."""
        return is_correct(score, self.correct_threshold)

    def judge_for(self, metric: str | None) -> str:
        """R_ans's judge for a sample whose metric is ``metric``: ``metric_judges``, else ``judge``
        (``reward.judges.route_judge`` without the benchmark table: the paper's one reward judge)."""
        return route_judge(metric, self.judge, self.metric_judges, by_benchmark=False)


def load_reward_config(recipe: str | None, overrides: list[str]) -> RewardConfig:
    """The recipe's ``reward`` section (if any) with ``reward.key=value`` (or ``key=value``)
    overrides applied; raises ConfigError naming the key."""
    data: dict = {}
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} not found; recipes live in recipes/*.yaml")
        data = (yaml.safe_load(path.read_text()) or {}).get("reward") or {}
    prefixed = [o if o.startswith("reward.") else f"reward.{o}" for o in overrides]
    section = apply_overrides({"reward": dict(data)}, prefixed)["reward"]
    return build(RewardConfig, section, prefix="reward.")
