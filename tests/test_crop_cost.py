"""C_tool, the format penalty, R's composition, RewardConfig validation and score_episodes."""

from __future__ import annotations

import re

import pytest

from awares_rl.core.episode import Episode, RewardParts
from reward.config import RewardConfig
from reward.crop_cost import compose_reward, crop_cost, format_reward
from reward.scoring import NO_ANSWER, RewardRequest, score_episodes, score_requests

# Defaults: alpha_miss = 0.5, alpha_use = 0.05, lam = 0.05.
COST_TABLE = [
    # needs_high_res, crop_ids, C_tool
    (True, [], 0.5),  # needed, missed: alpha_miss
    (True, [3], 0.10),  # 0.05 + 0.05 * 1
    (True, [0, 5], 0.15),  # 0.05 + 0.05 * 2
    (True, list(range(9)), 0.50),  # 0.05 + 0.05 * 9
    (False, [], 0.0),  # not needed, not taken
    (False, [4], 0.10),  # unneeded crop: still alpha_use + lam
    (None, [], 0.0),  # unknown counts as not needed
    (None, [1, 2, 3], 0.20),  # 0.05 + 0.05 * 3
    (True, [3, 3], 0.10),  # |C| counts distinct crops
]


@pytest.mark.parametrize(("needs", "crops", "expected"), COST_TABLE)
def test_crop_cost_table(needs, crops, expected):
    assert crop_cost(needs, crops) == pytest.approx(expected)


def test_crop_cost_custom_weights():
    # 0.2 + 0.1 * 2 = 0.4 ; miss = 1.0
    assert crop_cost(True, [1, 2], alpha_miss=1.0, alpha_use=0.2, lam=0.1) == pytest.approx(0.4)
    assert crop_cost(True, [], alpha_miss=1.0, alpha_use=0.2, lam=0.1) == 1.0


def test_missing_a_needed_crop_costs_more_than_any_smaller_crop_set():
    cfg = RewardConfig()
    for k in range(1, 9):  # up to 8 crops; all 9 cost exactly alpha_miss
        used = crop_cost(True, list(range(k)), cfg.alpha_miss, cfg.alpha_use, cfg.lam)
        assert used < crop_cost(True, [], cfg.alpha_miss, cfg.alpha_use, cfg.lam)


def test_format_and_compose():
    assert format_reward(None) == 0.0
    assert format_reward("junk") == -0.5
    assert format_reward("empty", format_penalty=-1.0) == -1.0
    assert compose_reward(1.0, 0.15, 0.0) == pytest.approx(0.85)  # 1 - 0.15 + 0
    assert compose_reward(0.8, 0.5, -0.5, w_ans=2.0) == pytest.approx(0.6)  # 1.6 - 0.5 - 0.5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha_miss": 0.1}, "alpha_miss"),  # 0.1 <= 0.05 + 0.05
        ({"alpha_use": -0.1}, "alpha_use"),
        ({"format_penalty": 0.5}, "format_penalty"),
        ({"judge": "bleu"}, "judge"),
        ({"metric_judges": {"anls": "nope"}}, "metric_judges['anls']"),
        ({"llm_fallback": "llm_judge"}, "llm_fallback"),
        ({"llm_prompt_template": "{question} {prediction}"}, "llm_prompt_template"),
        ({"num_workers": 0}, "num_workers"),
        ({"batch_size": 0}, "batch_size"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"port": 70000}, "port"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(f"reward.{field}")):
        RewardConfig(**kwargs)


def test_config_judge_routing():
    cfg = RewardConfig(judge="exact_match", metric_judges={"anls": "anls"})
    assert cfg.judge_for("anls") == "anls"
    assert cfg.judge_for("semantic") == "exact_match"
    assert cfg.judge_for(None) == "exact_match"


def _episode(answer, answers, metric="exact", needs=None, crops=(), invalid=None) -> Episode:
    return Episode(
        sample_id="s",
        question="q?",
        answers=answers,
        metric=metric,
        image_size=(448, 448),
        needs_high_res=needs,
        crop_ids=list(crops),
        final_answer=answer,
        invalid_tool_call=invalid,
    )


def test_score_episodes_sets_reward_parts():
    cfg = RewardConfig(judge="exact_match", metric_judges={"anls": "anls"})
    episodes = [
        _episode("417", ["417"], needs=True, crops=[0, 4]),  # 1 - (0.05 + 0.1) = 0.85
        _episode("417", ["417"], needs=True),  # 1 - 0.5 = 0.5
        _episode("helo", ["hello"], metric="anls"),  # ANLS 1 - 1/5 = 0.8, no cost
        _episode(None, ["x"], needs=True, invalid="junk"),  # 0 - 0.5 - 0.5 = -1.0
        _episode("no", ["yes"], needs=None, crops=[8]),  # 0 - 0.1 = -0.1
    ]
    parts = score_episodes(episodes, cfg)
    assert [p.total for p in parts] == pytest.approx([0.85, 0.5, 0.8, -1.0, -0.1])
    assert [ep.reward for ep in episodes] == parts
    assert parts[0] == RewardParts(
        1.0, pytest.approx(0.15), 0.0, pytest.approx(0.85), "exact_match"
    )
    assert parts[2].judge == "anls" and parts[2].answer == pytest.approx(0.8)
    assert parts[3] == RewardParts(0.0, 0.5, -0.5, -1.0, NO_ANSWER)


def test_weights_apply():
    cfg = RewardConfig(judge="exact_match", w_ans=2.0, alpha_miss=1.0, alpha_use=0.1, lam=0.2)
    (p,) = score_requests([RewardRequest("a", ["a"], needs_high_res=True, crop_ids=[1, 2])], cfg)
    assert p.total == pytest.approx(2.0 - (0.1 + 0.2 * 2))  # 1.5


def test_request_from_dict_errors_name_the_field():
    ok = RewardRequest.from_dict({"prediction": "a", "references": ["a"], "crop_ids": [0]})
    assert ok.crop_ids == [0] and ok.needs_high_res is None
    bad = [
        ({"prediction": "a", "references": "a"}, r"items\[2\].references"),
        ({"prediction": "a", "references": ["a"], "crop_ids": [9]}, r"items\[2\].crop_ids"),
        ({"prediction": "a", "references": ["a"], "needs_high_res": "yes"}, "needs_high_res"),
        ({"prediction": 1, "references": ["a"]}, "prediction"),
        ({"prediction": "a", "references": ["a"], "reward": 1}, "unknown key"),
    ]
    for item, message in bad:
        with pytest.raises(ValueError, match=message):
            RewardRequest.from_dict(item, where="items[2]")
