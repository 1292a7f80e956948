"""The AwaRes reward: R = w_ans * R_ans - C_tool + format, judged locally, on Ray or over HTTP."""

from reward.config import RewardConfig
from reward.crop_cost import compose_reward, crop_cost, format_reward
from reward.judges import BENCHMARK_JUDGES, JUDGES, get_judge
from reward.remote import EpisodeScorer, RemoteScorer, make_scorer
from reward.scoring import RewardRequest, score_episodes, score_requests

__all__ = [
    "BENCHMARK_JUDGES",
    "EpisodeScorer",
    "JUDGES",
    "RemoteScorer",
    "RewardConfig",
    "RewardRequest",
    "compose_reward",
    "crop_cost",
    "format_reward",
    "get_judge",
    "make_scorer",
    "score_episodes",
    "score_requests",
]
