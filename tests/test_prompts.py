"""Answer prompts per benchmark (awares_rl.core.prompts): the table, the synthetic benchmark asked
as is, and one prompt in rollout, the trajectory labels, SFT and eval."""

from __future__ import annotations

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl.core.engine import GenOutput, SamplingConfig
from awares_rl.core.prompts import OPTION_LETTER, SINGLE_WORD, asked_question, sample_question
from awares_rl.core.sample import Sample
from awares_rl.core.trajectory import Trajectory
from awares_rl.evaluate import EvalItem, _single_turn
from awares_rl.learner.batch import trajectory_to_sequence
from awares_rl.models import load_processor
from awares_rl.rollout import EpisodeRunner
from data_pipeline.config import SynthConfig
from data_pipeline.scene import make_scene
from data_pipeline.trajectories import TrajectoryBuilder, TrajectoryConfig


@pytest.mark.parametrize("source, metric, suffix", [
    ("docvqa", "anls", SINGLE_WORD), ("chartqa", "relaxed", SINGLE_WORD), ("textvqa", "vqa", SINGLE_WORD),
    ("pope", "exact", SINGLE_WORD), ("vstar", "exact", OPTION_LETTER), ("ocrbench", "ocrbench", ""),
    ("realworldqa", "exact", ""),
    (None, "anls", SINGLE_WORD),  # no benchmark: the metric's prompt
    (None, "exact", ""), (None, None, ""), ("my-own-data", "semantic", ""),
])
def test_answer_prompt_by_benchmark_then_metric(source, metric, suffix):
    sample = Sample("a", "a.png", "What is it?", ("x",), metric=metric, meta={"source": source} if source else {})
    assert sample_question(sample) == "What is it?" + suffix
    assert asked_question("What is it?", source, metric) == "What is it?" + suffix


def test_the_synthetic_benchmark_is_asked_as_is():
    sample, _ = make_scene(0, "train", 0, SynthConfig())
    assert sample_question(sample) == sample.question


class RecordingEngine:
    """Answers "red" to everything and keeps the decoded prompts it was sent."""

    version = 0

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.prompts = tokenizer, []
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(self, requests, sampling):
        self.prompts += [self.tokenizer.decode(r.prompt_ids) for r in requests]
        ids = self.tokenizer("red", add_special_tokens=False)["input_ids"] + [self.eos]
        return [GenOutput(r.prompt_ids, ids, [0.0] * len(ids), "stop") for r in requests]


def test_one_prompt_in_rollout_trajectories_sft_and_eval(tiny_dir, tmp_path):
    processor = load_processor(tiny_dir)
    tok = processor.tokenizer
    image = Image.new("RGB", (448, 448), (200, 30, 30))
    image.save(tmp_path / "doc.png")
    sample = Sample("docvqa-1", "doc.png", "What colour is it?", ("red",), metric="anls", meta={"source": "docvqa"})
    asked = "What colour is it?" + SINGLE_WORD
    sampling = SamplingConfig(0.0, 1.0, 8)

    engine = RecordingEngine(tok)
    EpisodeRunner(engine, tok).run([sample], 1, sampling, images=[image])
    judge = lambda preds, refs, metrics: [1.0] * len(preds)  # noqa: E731
    (traj,) = TrajectoryBuilder(engine, tok, judge, TrajectoryConfig()).process([sample], tmp_path)
    _single_turn(engine, processor, [EvalItem(sample)], [image], "full", sampling, 0.5)
    assert len(engine.prompts) == 4  # rollout turn 1, labels at low and full res, eval
    assert all(asked in p for p in engine.prompts)

    assert isinstance(traj, Trajectory) and traj.benchmark == "docvqa" and traj.asked_question == asked
    again = Trajectory.from_json(traj.to_json())
    sft = tok.decode(trajectory_to_sequence(processor, again.to_json(), image=image).token_ids)
    assert asked in sft
