"""GRPO charges alpha_miss on converted datasets: a sample without ``needs_high_res`` takes its
trajectory's ``needs_crop`` label (core.trajectory.label_needs_high_res via grpo.train_samples)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl.core.engine import GenOutput, SamplingConfig
from awares_rl.core.trajectory import Trajectory
from awares_rl.grpo import train_samples
from awares_rl.models import load_processor
from awares_rl.rollout import EpisodeRunner
from data_pipeline.datasets import convert
from reward.config import RewardConfig
from reward.scoring import score_episodes


class DirectEngine:
    """Answers every prompt with ``answer`` at once (no crop)."""

    version = 0

    def __init__(self, tokenizer, answer: str) -> None:
        self.tokenizer, self.answer = tokenizer, answer

    def generate(self, requests, sampling):
        ids = self.tokenizer(self.answer, add_special_tokens=False)["input_ids"]
        ids += [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        return [GenOutput(r.prompt_ids, ids, [0.0] * len(ids), "stop") for r in requests]


def _trajectory(sid: str, needs_crop: bool) -> Trajectory:
    turns = ("GET_CROPS: ['3']", "1999") if needs_crop else ("1999",)
    return Trajectory(sid, "images/x.png", "Date?", ("1999",), "anls", "train", needs_crop,
                      (3,) if needs_crop else (), turns, "19", "1999", 0.0, 1.0, None, benchmark="docvqa")


@pytest.fixture
def converted(tmp_path):
    """A DocVQA annotation file with two records, converted (no needs_high_res), as train.jsonl."""
    (tmp_path / "src" / "documents").mkdir(parents=True)
    Image.new("RGB", (64, 48), "white").save(tmp_path / "src" / "documents" / "d.png")
    records = [{"questionId": i, "question": "Date?", "answers": ["1999"], "image": "documents/d.png"} for i in (1, 2)]
    (tmp_path / "src" / "val.json").write_text(json.dumps({"data": records}))
    report = convert("docvqa", tmp_path / "src" / "val.json", tmp_path / "data")
    shutil.copyfile(report.path, tmp_path / "data" / "train.jsonl")
    return tmp_path / "data" / "train.jsonl"


def _costs(samples, root, tokenizer) -> dict[str, float]:
    runner = EpisodeRunner(DirectEngine(tokenizer, "1999"), tokenizer)
    episodes = runner.run(samples, 1, SamplingConfig(0.0, 1.0, 8), root=root)
    cfg = RewardConfig(metric_judges={"anls": "anls"})
    score_episodes(episodes, cfg)
    assert all(ep.crop_ids == [] and ep.reward.answer == 1.0 for ep in episodes)
    return {ep.sample_id: ep.reward.crop_cost for ep in episodes}


def test_trajectory_labels_charge_alpha_miss(converted, tiny_dir, tmp_path, caplog):
    tokenizer = load_processor(tiny_dir).tokenizer
    labels = tmp_path / "run" / "trajectories" / "train.jsonl"
    labels.parent.mkdir(parents=True)
    labels.write_text(_trajectory("docvqa-1", True).to_line() + "\n" + _trajectory("docvqa-2", False).to_line() + "\n")

    with caplog.at_level(logging.WARNING, logger="awares_rl.grpo"):
        unlabelled = train_samples(converted, tmp_path / "run" / "trajectories" / "missing.jsonl")
    assert [s.needs_high_res for s in unlabelled] == [None, None]
    assert "alpha_miss is never charged" in caplog.text
    assert _costs(unlabelled, converted.parent, tokenizer) == {"docvqa-1": 0.0, "docvqa-2": 0.0}  # the bug

    samples = train_samples(converted, labels)
    assert [s.needs_high_res for s in samples] == [True, False]
    alpha_miss = RewardConfig().alpha_miss
    assert _costs(samples, converted.parent, tokenizer) == {"docvqa-1": alpha_miss, "docvqa-2": 0.0}


def test_a_sample_keeps_its_own_label(converted, tmp_path):
    text = converted.read_text().splitlines()
    first = json.loads(text[0])
    first["needs_high_res"] = False  # the generator's label wins over the trajectory's
    converted.write_text("\n".join([json.dumps(first), *text[1:]]) + "\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(_trajectory("docvqa-1", True).to_line() + "\n" + _trajectory("docvqa-2", True).to_line() + "\n")
    assert [s.needs_high_res for s in train_samples(converted, labels)] == [False, True]
