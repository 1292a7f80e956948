"""One judge routing rule (``reward.judges.route_judge``) for the trajectory labels, GRPO's reward
and eval: a sample without a metric gets the same judge, and the same score, in all three."""

from __future__ import annotations

from pathlib import Path

import pytest

from awares_rl.config import load_recipe
from awares_rl.core.sample import Sample
from awares_rl.evaluate import EvalItem, Prediction, score
from data_pipeline.trajectories import make_judge_fn
from reward.judges import anls, route_judge
from reward.scoring import RewardRequest, answer_scores

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"


def test_route_judge_rule():
    assert route_judge(None, "anls") == "anls"  # no metric: the default, whatever else is set
    assert route_judge(None, "anls", {"exact": "llm_judge"}) == "anls"
    assert route_judge("relaxed", "embedding_cosine") == "relaxed_accuracy"  # the benchmark's own
    assert route_judge("relaxed", "embedding_cosine", {"relaxed": "llm_judge"}) == "llm_judge"
    # GRPO's R_ans: one judge for every sample unless mapped (the paper's reward)
    assert route_judge("relaxed", "embedding_cosine", by_benchmark=False) == "embedding_cosine"
    assert route_judge("exact", "embedding_cosine", {"exact": "exact_match"}, by_benchmark=False) == "exact_match"


@pytest.mark.parametrize("judge", ["anls", "exact_match"])
def test_a_sample_without_a_metric_scores_the_same_in_every_stage(judge):
    cfg = load_recipe(RECIPE, [f"reward.judge={judge}"])
    pred, refs = "red panl", ["Red panel"]  # ANLS 0.889 (1 edit in 9), exact match 0
    labels = make_judge_fn(cfg.trajectories, cfg.reward)([pred], [refs], [None])[0]
    reward = answer_scores([RewardRequest(pred, refs, metric=None)], cfg.reward)[0][0]
    preds = [Prediction("s", pred, 1, 1, 1.0, 0.0)]
    score(preds, [EvalItem(Sample("s", "x.png", "q?", tuple(refs)))], cfg)
    expected = anls([pred], [refs])[0] if judge == "anls" else 0.0
    assert labels == reward == preds[0].score == pytest.approx(expected)
    assert judge == "exact_match" or 0.8 < expected < 0.9
