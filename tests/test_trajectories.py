"""SFT trajectory construction: the needs-crop rule, boxes -> crops through the pipeline, the JSONL
record, resume, the grounding-box parser, and an end-to-end run on the tiny model (HF engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers)
from awares_rl.core.engine import GenOutput
from awares_rl.core.sample import Sample, write_jsonl
from awares_rl.core.trajectory import Trajectory, TrajectoryError, read_trajectories
from awares_rl.models import load_processor
from data_pipeline.grounding import DatasetBoxes, VLMGrounder, parse_boxes
from data_pipeline.trajectories import (
    TrajectoryBuilder,
    TrajectoryConfig,
    TrajectoryWorker,
    build_trajectories,
    fan_out,
    make_judge_fn,
    needs_crop,
    run_batches,
)
from data_pipeline.trajectory_report import write_report

SIDE = 448  # hand-made images are 448 x 448; quadrants are 224 x 224, the low-res view 224 x 224


# ---------------------------------------------------------------- the needs-crop rule
@pytest.mark.parametrize("low, full, threshold, expected", [
    (0.0, 1.0, 0.5, True),    # wrong at low res, right at full res: the only crop case
    (1.0, 1.0, 0.5, False),   # right at both: answer directly
    (0.0, 0.0, 0.5, False),   # wrong at both: a crop would not help
    (1.0, 0.0, 0.5, False),   # right at low res only (full res got worse): no crop
    (0.49, 0.5, 0.5, True),   # the threshold counts as right
    (0.5, 0.9, 0.5, False),   # low res already at the threshold
    (0.6, 0.9, 0.7, True),    # a stricter threshold turns a pass into a miss
    (0.3, 0.69, 0.7, False),
])
def test_needs_crop_rule(low, full, threshold, expected):
    assert needs_crop(low, full, threshold) is expected


# ---------------------------------------------------------------- a scripted engine
class ScriptedEngine:
    """Answers by question and view: a low-res view (side < 448) gets ``low``, the full image
    ``full``, a grounding prompt ``box``. Counts the requests it serves."""

    version = 0

    def __init__(self, tokenizer, script: dict[str, tuple[str, str, str]]) -> None:
        self.tokenizer, self.script, self.requests = tokenizer, script, 0
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(self, requests, sampling):
        assert sampling.temperature == 0  # trajectories are built greedily
        outs = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_ids)
            assert "GET_CROPS" not in prompt and "system" not in prompt  # the plain VQA prompt
            question = next(q for q in self.script if q in prompt)
            low, full, box = self.script[question]
            text = box if "bounding box" in prompt else full if r.images[0].width >= SIDE else low
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
            outs.append(GenOutput(r.prompt_ids, ids, [0.0] * len(ids), "stop"))
        self.requests += len(requests)
        return outs


# id: (low answer, full answer, grounder reply, dataset boxes, gt answer)
CASES = {
    "crop-br": ("blue", "red", "", [[300, 300, 400, 400]], "red"),          # bottom-right quadrant
    "direct": ("red", "red", "", [[300, 300, 400, 400]], "red"),            # right at low res
    "both-wrong": ("blue", "green", "", [[300, 300, 400, 400]], "red"),
    "crop-rule": ("blue", "red", "", [[10, 10, 230, 200]], "red"),         # crosses x = 224
    "crop-vlm": ("blue", "red", "The box is [300, 10, 440, 100].", [], "red"),  # top-right, VLM box
    "vlm-garbage": ("blue", "red", "I cannot tell.", [], "red"),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_processor(tiny_dir).tokenizer


@pytest.fixture()
def dataset(tmp_path) -> tuple[list[Sample], Path]:
    """The hand-made samples, with images, under tmp_path/data (plus one with a missing image)."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    samples = []
    for i, (sid, (_, _, _, boxes, gt)) in enumerate(CASES.items()):
        Image.new("RGB", (SIDE, SIDE), (40 * i, 90, 160)).save(root / "images" / f"{sid}.png")
        samples.append(Sample(sid, f"images/{sid}.png", f"question {sid}?", (gt,),
                              tuple(tuple(b) for b in boxes), "exact", sid.startswith("crop")))
    samples.append(Sample("no-image", "images/missing.png", "question no-image?", ("red",), metric="exact"))
    write_jsonl(samples, root / "train.jsonl")
    return samples, root


def script() -> dict[str, tuple[str, str, str]]:
    return {f"question {sid}?": (low, full, box) for sid, (low, full, box, _, _) in CASES.items()}


def _build(samples, root, tokenizer, cfg, out=None, limit=None, engine=None):
    engine = engine or ScriptedEngine(tokenizer, script())
    grounder = VLMGrounder(engine, tokenizer, coords="pixels")
    return build_trajectories(samples, root, engine, tokenizer, make_judge_fn(cfg), cfg, out=out,
                              grounder=grounder, split="train", limit=limit, progress=False)


@pytest.mark.parametrize("rule, rule_crop", [("smallest-cover", 5), ("max-iou", 0)])
def test_boxes_map_to_crops_through_the_pipeline(dataset, tokenizer, tmp_path, rule, rule_crop):
    samples, root = dataset
    out = tmp_path / "out" / "train.jsonl"
    trajs = {t.id: t for t in _build(samples, root, tokenizer, TrajectoryConfig(batch_size=4, box_rule=rule), out)}
    expected = {  # id: (needs_crop, crop_ids, box_source)
        "crop-br": (True, (3,), "dataset"),
        "direct": (False, (), None),
        "both-wrong": (False, (), None),
        "crop-rule": (True, (rule_crop,), "dataset"),
        "crop-vlm": (True, (1,), "vlm"),
    }
    assert {k: (t.needs_crop, t.crop_ids, t.box_source) for k, t in trajs.items()} == expected
    assert trajs["crop-br"].turns == ("GET_CROPS: ['3']", "red")  # the gt answer is the target
    assert trajs["direct"].turns == ("red",)
    assert trajs["both-wrong"].low_res_answer == "blue" and trajs["both-wrong"].full_res_score == 0.0
    assert trajs["crop-vlm"].evidence_boxes == ((300.0, 10.0, 440.0, 100.0),)
    assert trajs["crop-br"].image == "../data/images/crop-br.png"
    assert (out.parent / trajs["crop-br"].image).is_file()
    skipped = [json.loads(line) for line in out.with_name("train.skipped.jsonl").read_text().splitlines()]
    assert {s["id"]: s["reason"].split(":")[0] for s in skipped} == {
        "vlm-garbage": "needs a crop, but the vlm grounder gave no evidence box", "no-image": "image"}
    assert read_trajectories(out) == list(trajs.values())


def test_whole_image_labels_ask_for_both_halves(dataset, tokenizer):
    samples, root = dataset
    cfg = TrajectoryConfig(batch_size=4, crop_labels="whole-image")
    trajs = {t.id: t for t in _build(samples, root, tokenizer, cfg)}
    assert {k: t.crop_ids for k, t in trajs.items()} == {  # the same decisions, other crops
        "crop-br": (5, 6), "direct": (), "both-wrong": (), "crop-rule": (5, 6), "crop-vlm": (5, 6)}
    assert trajs["crop-br"].turns == ("GET_CROPS: ['5','6']", "red")
    assert trajs["crop-br"].evidence_boxes == ((300.0, 300.0, 400.0, 400.0),)  # still recorded


def test_dataset_grounder_only_uses_dataset_boxes(dataset, tokenizer, tmp_path):
    samples, root = dataset
    trajs = {t.id: t for t in _build(samples, root, tokenizer, TrajectoryConfig(grounder="dataset"))}
    assert "crop-vlm" not in trajs and trajs["crop-br"].crop_ids == (3,)
    assert DatasetBoxes().ground(None, "q", "a", samples[0]) == [(300.0, 300.0, 400.0, 400.0)]
    with pytest.raises(ValueError, match="needs sample="):
        DatasetBoxes().ground(None, "q", "a")


# ---------------------------------------------------------------- resume
def test_resume_after_interruption_gives_the_same_file(dataset, tokenizer, tmp_path):
    samples, root = dataset
    cfg = TrajectoryConfig(batch_size=2)
    whole = tmp_path / "whole" / "t.jsonl"
    _build(samples, root, tokenizer, cfg, whole)
    parts = tmp_path / "parts" / "t.jsonl"
    first = _build(samples, root, tokenizer, cfg, parts, limit=2)  # "interrupted" after one batch
    assert [t.id for t in first] == ["crop-br", "direct"] and len(parts.read_text().splitlines()) == 2
    with open(parts, "a") as f:
        f.write('{"id": "both-wr')  # a write cut off mid-line by the interruption
    engine = ScriptedEngine(tokenizer, script())
    again = _build(samples, root, tokenizer, cfg, parts, engine=engine)
    assert len(again) == 5 and len({t.id for t in again}) == 5
    assert parts.read_text() == whole.read_text()
    assert parts.with_name("t.skipped.jsonl").read_text() == whole.with_name("t.skipped.jsonl").read_text()
    # the resumed run did only the 5 samples left with an image (2 views each, +2 grounding calls)
    assert engine.requests == 4 * 2 + 2
    done = ScriptedEngine(tokenizer, script())
    assert _build(samples, root, tokenizer, cfg, parts, engine=done) == again and done.requests == 0
    with pytest.raises(TrajectoryError, match="other settings"):
        _build(samples, root, tokenizer, TrajectoryConfig(box_rule="max-iou"), parts)


class LocalGroup:
    """``ActorGroup.call_split`` in process: item i of the split goes to worker i."""

    def __init__(self, workers) -> None:
        self.workers = workers

    def call_split(self, method, items, *args):
        assert len(items) == len(self.workers)
        return [getattr(w, method)([item], *args) for w, item in zip(self.workers, items)]


def test_fan_out_over_workers_keeps_batch_order(dataset, tokenizer, tmp_path):
    samples, root = dataset
    cfg = TrajectoryConfig(batch_size=2)  # 7 samples: 4 batches, so the 2nd round leaves 2 actors idle
    whole = tmp_path / "whole" / "t.jsonl"
    _build(samples, root, tokenizer, cfg, whole)
    workers = []
    for _ in range(3):
        worker = object.__new__(TrajectoryWorker)
        engine = ScriptedEngine(tokenizer, script())
        worker.builder = TrajectoryBuilder(engine, tokenizer, make_judge_fn(cfg), cfg,
                                           VLMGrounder(engine, tokenizer, coords="pixels"))
        workers.append(worker)
    out = tmp_path / "fan" / "t.jsonl"
    run_batches(samples, cfg, lambda bs: fan_out(LocalGroup(workers), 3, bs, root, out.parent, "train"),
                out, progress=False)
    assert out.read_text() == whole.read_text()
    assert [w.builder.engine.requests > 0 for w in workers] == [True, True, True]


# ---------------------------------------------------------------- the JSONL record
def _record(**over) -> dict:
    rec = {"id": "a", "image": "images/a.png", "question": "q?", "answers": ["red"], "metric": "exact",
           "split": "train", "needs_crop": True, "crop_ids": [0, 4], "turns": ["GET_CROPS: ['0','4']", "red"],
           "low_res_answer": "blue", "full_res_answer": "red", "low_res_score": 0.0, "full_res_score": 1.0,
           "needs_high_res": True, "evidence_boxes": [[1, 2, 30, 40]], "box_source": "dataset"}
    return {**rec, **over}


def test_trajectory_round_trip(tmp_path):
    t = Trajectory.from_json(_record())
    assert Trajectory.from_json(json.loads(t.to_line())) == t
    direct = Trajectory.from_json(_record(id="b", needs_crop=False, crop_ids=[], turns=["red"],
                                          evidence_boxes=[], box_source=None, needs_high_res=None))
    path = tmp_path / "t.jsonl"
    path.write_text(t.to_line() + "\n\n" + direct.to_line() + "\n")
    assert read_trajectories(path) == [t, direct]


@pytest.mark.parametrize("line, field, message", [
    ("{not json", "<line>", "invalid JSON"),
    ("[1, 2]", "<line>", "expected a JSON object"),
    (json.dumps({k: v for k, v in _record().items() if k != "turns"}), "turns", "is missing"),
    (json.dumps(_record(extra=1)), "extra", "unknown field"),
    (json.dumps(_record(answers=[])), "answers", "non-empty list"),
    (json.dumps(_record(crop_ids=[0, 9])), "crop_ids", "unique ints in 0..8"),
    (json.dumps(_record(low_res_score="1")), "low_res_score", "finite number"),
    (json.dumps(_record(needs_crop="yes")), "needs_crop", "true or false"),
    (json.dumps(_record(turns=["red"])), "turns", "needs_crop is true"),
    (json.dumps(_record(turns=["GET_CROPS: ['3']", "red"])), "turns", "naming crop_ids"),
    (json.dumps(_record(turns=["GET_CROPS: ['0'", "red"])), "turns", "malformed tool call"),
    (json.dumps(_record(needs_crop=False)), "turns", "needs_crop is false"),
    (json.dumps(_record(evidence_boxes=[[5, 5, 1, 1]])), "evidence_boxes", "x1, y1, x2, y2"),
    (json.dumps(_record(id="b")).replace('"b"', '"a"', 1), "id", "duplicate id"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + line + "\n")
    with pytest.raises(TrajectoryError, match=message) as err:
        read_trajectories(path)
    assert err.value.where == f"{path}:2" and err.value.field == field


# ---------------------------------------------------------------- the grounding-box parser
@pytest.mark.parametrize("text, coords, expected", [
    ("[10, 20, 110, 220]", "pixels", [(10, 20, 110, 220)]),
    ("The box is (10,20,110,220).", "pixels", [(10, 20, 110, 220)]),
    ('```json\n[{"bbox_2d": [10, 20, 110, 220], "label": "cup"}]\n```', "pixels", [(10, 20, 110, 220)]),
    ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5.5, 6, 7, 8.25]}]', "pixels", [(1, 2, 3, 4), (5.5, 6, 7, 8.25)]),
    ("<|box_start|>(10,20),(110,220)<|box_end|>", "pixels", [(10, 20, 110, 220)]),
    ("[110, 220, 10, 20]", "pixels", [(10, 20, 110, 220)]),            # swapped corners
    ("[-5, 20, 500, 900]", "pixels", [(0, 20, 448, 336)]),              # clipped to 448 x 336
    ("[0, 0, 500, 1000]", "norm1000", [(0, 0, 224, 336)]),
    ("[0, 0, 112, 84]", "resized", [(0, 0, 224, 168)]),                 # resized to 224 x 168
])
def test_parse_boxes_good(text, coords, expected):
    got = parse_boxes(text, 448, 336, coords, resized=(224, 168))
    assert got == [tuple(float(v) for v in b) for b in expected]


@pytest.mark.parametrize("text", [
    "", "no box here", "[10, 20, 30]", "[1, 2, 3, 4, 5]", "[10, 10, 10, 50]", "[500, 400, 600, 600]",
    "[a, b, c, d]", "GET_CROPS: ['3']",
])
def test_parse_boxes_bad_is_none(text):
    assert parse_boxes(text, 448, 336) is None


def test_parse_boxes_and_grounder_refuse_bad_settings(tokenizer):
    with pytest.raises(ValueError, match="unknown box coordinates"):
        parse_boxes("[1, 2, 3, 4]", 10, 10, "percent")
    with pytest.raises(ValueError, match="resized"):
        parse_boxes("[1, 2, 3, 4]", 10, 10, "resized")
    with pytest.raises(ValueError, match="image_processor"):
        VLMGrounder(None, tokenizer, coords="resized")


# ---------------------------------------------------------------- end to end, tiny model, HF engine
def test_end_to_end_cli_on_tiny_model(tiny_dir, tmp_path, capsys):
    from awares_rl.cli import main
    from data_pipeline.synthetic import generate

    data = generate(tmp_path / "data", n=5, seed=0, split="train", progress=False)
    out = tmp_path / "traj" / "train.jsonl"
    argv = ["data", "trajectories", "--model", str(tiny_dir), "--out", str(out), "--quiet",
            f"run.out_dir={tmp_path / 'runs'}", f"data.dir={data.parent}", "rollout.backend=hf",
            "trajectories.batch_size=3", "trajectories.max_new_tokens=4"]
    assert main(argv) == 0
    assert "SFT trajectories" in capsys.readouterr().out
    trajs = read_trajectories(out)
    stats = json.loads(out.with_name("train.stats.json").read_text())
    assert len(trajs) == stats["overall"]["n"] == 5 - stats["skipped"]
    n = len(trajs)
    assert stats["overall"]["needs_crop"] == round(sum(t.needs_crop for t in trajs) / n, 4)
    assert stats["overall"]["low_res_accuracy"] == round(sum(t.low_res_score >= 0.5 for t in trajs) / n, 4)
    assert stats["by_split"]["train"]["n"] == stats["by_metric"]["exact"]["n"] == n
    assert sum(stats["crop_id_histogram"].values()) == sum(len(t.crop_ids) for t in trajs)
    agree = stats["needs_high_res_agreement"]
    assert agree["n_known"] == n == sum(v for k, v in agree.items() if k.startswith("high_res_"))
    for t in trajs:
        assert (out.parent / t.image).is_file() and t.turns[-1] == t.answers[0]
        assert needs_crop(t.low_res_score, t.full_res_score) == t.needs_crop
    # a rerun resumes: nothing new, the same file, the same report
    before = out.read_text()
    assert main(argv) == 0 and out.read_text() == before
    assert json.loads(out.with_name("train.stats.json").read_text()) == stats
    assert write_report(out, 0.5) == stats
