"""One judge routing rule (``reward.judges.route_judge``) and one correct threshold
(``reward.correct_threshold``) for the trajectory labels, GRPO's reward and eval: a sample without a
metric gets the same judge, the same score and the same right/wrong call in all three."""

from __future__ import annotations

from pathlib import Path

import pytest

from awares_rl.config import load_recipe
from awares_rl.core.sample import Sample
from awares_rl.core.trajectory import Trajectory
from awares_rl.evaluate import EvalItem, Prediction, score
from data_pipeline.trajectories import make_judge_fn, needs_crop
from data_pipeline.trajectory_report import trajectory_stats
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


@pytest.mark.parametrize("threshold, right", [(0.5, True), (0.95, False)])
def test_one_correct_threshold_in_every_stage(threshold, right):
    cfg = load_recipe(RECIPE, ["reward.judge=anls", f"reward.correct_threshold={threshold}"])
    pred, refs = "red panl", ["Red panel"]  # ANLS 0.889
    s = make_judge_fn(cfg.trajectories, cfg.reward)([pred], [refs], [None])[0]
    # trajectories: a low-res answer scored s, a full-res answer scored 1 -> a crop is needed iff s is wrong
    assert needs_crop(s, 1.0, cfg.reward.correct_threshold) is (not right)
    traj = Trajectory("s", "x.png", "q?", tuple(refs), None, "train", not right, () if right else (0,),
                      ("Red panel",) if right else ("GET_CROPS: ['0']", "Red panel"), pred, refs[0], s, 1.0, None)
    stats = trajectory_stats([traj], [], cfg.reward.correct_threshold)
    assert stats["overall"]["low_res_accuracy"] == (1.0 if right else 0.0)
    # GRPO's logged accuracy calls cfg.reward.correct on R_ans
    assert cfg.reward.correct(answer_scores([RewardRequest(pred, refs)], cfg.reward)[0][0]) is right
    # eval
    preds = [Prediction("s", pred, 1, 1, 1.0, 0.0)]
    score(preds, [EvalItem(Sample("s", "x.png", "q?", tuple(refs)))], cfg)
    assert preds[0].correct is right
