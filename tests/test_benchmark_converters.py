"""The OCRBench, POPE and RealWorldQA converters: hand-written records in each benchmark's real
layout (HF columns and native annotation files), images made with PIL, and the judge each
benchmark's metric routes to."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers / datasets)
from awares_rl.core.prompts import SINGLE_WORD, sample_question
from data_pipeline.datasets import ConvertError, convert, read_samples
from reward.judges import get_judge, route_judge

RWQA_Q = ("Which side of the road is the truck on?\nA. left\nB. right\nC. middle\n"
          "Please answer directly with only the letter of the correct option and nothing else.")


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 40), (60 * i, 120, 200)) for i in range(n)]


def _hf(rows: dict, folder):
    import datasets

    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(str(folder))
    return folder


def _judge(sample, prediction: str) -> float:
    name = route_judge(sample.metric, "embedding_cosine")
    return get_judge(name)([prediction], [list(sample.answers)])[0]


def test_ocrbench_hf_columns(tmp_path):
    src = _hf({"dataset": ["IIIT5K", "HME100k"], "question": ["what is written in the image?"] * 2,
               "question_type": ["Regular Text Recognition", "Handwritten Mathematical Expression Recognition"],
               "answer": [["CENTRE"], ["x^2", "x ^ 2"]], "image": _images(2)}, tmp_path / "ocr")
    samples, _ = read_samples(convert("ocrbench", src, tmp_path / "out").path)
    assert [s.id for s in samples] == ["ocrbench-0", "ocrbench-1"]
    assert samples[0].metric == "ocrbench" and samples[1].answers == ("x^2", "x ^ 2")
    assert samples[0].meta == {"source": "ocrbench", "dataset": "IIIT5K", "question_type": "Regular Text Recognition"}
    assert route_judge("ocrbench", "embedding_cosine") == "ocrbench"
    assert _judge(samples[0], "The word is Centre.") == 1.0 and _judge(samples[0], "CENTER") == 0.0
    assert sample_question(samples[0]) == samples[0].question  # lmms-eval asks OCRBench as is


def test_ocrbench_native_json(tmp_path):
    (tmp_path / "OCRBench_Images" / "IIIT5K").mkdir(parents=True)
    _images(1)[0].save(tmp_path / "OCRBench_Images" / "IIIT5K" / "1.png")
    ann = [{"dataset_name": "IIIT5K", "image_path": "IIIT5K/1.png", "question": "what is written?",
            "answers": "STOP", "type": "Regular Text Recognition"}]
    (tmp_path / "OCRBench.json").write_text(json.dumps(ann))
    (s,), _ = read_samples(convert("ocrbench", tmp_path / "OCRBench.json", tmp_path / "out").path)
    assert s.answers == ("STOP",) and s.meta["question_type"] == "Regular Text Recognition"


def test_pope_hf_columns_and_yes_no(tmp_path):
    rows = {"id": ["0", "1"], "question_id": ["1", "2"], "question": ["Is there a dog in the image?"] * 2,
            "answer": ["yes", "No"], "image_source": ["COCO_val2014_1"] * 2, "category": ["adversarial"] * 2,
            "image": _images(2)}
    samples, _ = read_samples(convert("pope", _hf(rows, tmp_path / "pope"), tmp_path / "out").path)
    assert [(s.id, s.answers, s.metric) for s in samples] == [("pope-1", ("yes",), "exact"), ("pope-2", ("no",), "exact")]
    assert samples[0].meta == {"source": "pope", "category": "adversarial", "image_source": "COCO_val2014_1"}
    assert _judge(samples[0], "Yes.") == 1.0 and _judge(samples[1], "yes") == 0.0
    assert sample_question(samples[0]) == "Is there a dog in the image?" + SINGLE_WORD


def test_pope_native_lines_and_a_bad_answer(tmp_path):
    (tmp_path / "val2014").mkdir()
    _images(1)[0].save(tmp_path / "val2014" / "COCO_val2014_000000001.jpg")
    lines = [{"question_id": 1, "image": "COCO_val2014_000000001.jpg", "text": "Is there a cat in the image?",
              "label": "no"}, {"question_id": 2, "image": "COCO_val2014_000000001.jpg",
                               "text": "Is there a car in the image?", "label": "maybe"}]
    ann = tmp_path / "coco_pope_random.json"  # POPE ships JSON lines under a .json name
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ConvertError, match=r"coco_pope_random.json:2: field 'answer': must be yes or no"):
        convert("pope", ann, tmp_path / "out")
    report = convert("pope", ann, tmp_path / "out", on_error="skip")
    assert report.written == 1 and report.skipped == 1
    assert read_samples(report.path)[0][0].question == "Is there a cat in the image?"


def test_realworldqa_letters_and_short_answers(tmp_path):
    rows = {"question": [RWQA_Q, "How many cars are visible? Please answer directly with a single word or number."],
            "answer": ["B", "3"], "image": _images(2)}
    samples, _ = read_samples(convert("realworldqa", _hf(rows, tmp_path / "rwqa"), tmp_path / "out").path)
    assert [(s.id, s.answers, s.metric) for s in samples] == [
        ("realworldqa-0", ("B", "right"), "exact"), ("realworldqa-1", ("3",), "exact")]
    assert _judge(samples[0], "B.") == 1.0 and _judge(samples[0], "right") == 1.0 and _judge(samples[0], "A") == 0.0
    assert _judge(samples[1], "3") == 1.0
    assert sample_question(samples[0]) == RWQA_Q  # its questions carry their own instruction
