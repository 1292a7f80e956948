"""Answers cut off at max_new_tokens are counted: eval's summary and table, the trajectory records
and their stats (GRPO logs rollout/truncation_rate: tests/test_tracking.py)."""

from __future__ import annotations

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl.core.engine import GenOutput, SamplingConfig
from awares_rl.core.sample import Sample
from awares_rl.core.trajectory import Trajectory
from awares_rl.evaluate import EvalItem, _policy, _single_turn, results_table, summarize
from awares_rl.models import load_processor
from awares_rl.rollout import EpisodeSettings
from data_pipeline.trajectories import TrajectoryBuilder, TrajectoryConfig
from data_pipeline.trajectory_report import trajectory_stats


class CuttingEngine:
    """Answers "red"; the prompts whose question contains "long" are cut off ("length")."""

    version = 0

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def generate(self, requests, sampling):
        outs = []
        for r in requests:
            cut = "long" in self.tokenizer.decode(r.prompt_ids)
            ids = self.tokenizer("red", add_special_tokens=False)["input_ids"]
            ids += [] if cut else [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
            outs.append(GenOutput(r.prompt_ids, ids, [0.0] * len(ids), "length" if cut else "stop"))
        return outs


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir)


def _samples() -> list[Sample]:
    return [Sample(f"s{i}", "x.png", f"{'long' if i < 3 else 'short'} question {i}?", ("red",), metric="exact")
            for i in range(4)]


@pytest.mark.parametrize("mode", ["low", "full", "policy"])
def test_eval_counts_truncated_answers(processor, mode):
    items = [EvalItem(s) for s in _samples()]
    images = [Image.new("RGB", (448, 448), "red")] * 4
    engine, sampling = CuttingEngine(processor.tokenizer), SamplingConfig(0.0, 1.0, 4)
    if mode == "policy":
        preds = _policy(engine, processor, items, images, sampling, EpisodeSettings())
    else:
        preds = _single_turn(engine, processor, items, images, mode, sampling, 0.5)
    assert [p.truncated for p in preds] == [True, True, True, False]
    # a cut single-turn answer is scored as it stands; a cut episode ends without an answer
    assert [p.answer for p in preds][:3] == ([None] * 3 if mode == "policy" else ["red"] * 3)
    summary = summarize(preds, items, mode)
    assert summary["truncated"] == 3 and summary["truncated_share"] == 0.75
    rows = {row: cells for row, *cells in _rows(results_table({mode: summary}))}
    assert rows["truncated (eval.max_new_tokens)"] == ["3"]


def _rows(table):
    return zip(*[col._cells for col in table.columns])


def test_trajectories_record_and_count_truncated_answers(processor, tmp_path):
    Image.new("RGB", (448, 448), "red").save(tmp_path / "x.png")
    builder = TrajectoryBuilder(CuttingEngine(processor.tokenizer), processor.tokenizer,
                                lambda preds, refs, metrics: [1.0] * len(preds), TrajectoryConfig())
    trajs = builder.process(_samples(), tmp_path)
    assert [(t.low_res_truncated, t.full_res_truncated) for t in trajs] == [(True, True)] * 3 + [(False, False)]
    assert Trajectory.from_json(trajs[0].to_json()) == trajs[0]
    stats = trajectory_stats(trajs, [], 0.5)
    assert stats["truncated"] == {"low_res": 3, "full_res": 3, "share": 0.75}
