"""Local dataset loaders: Sample JSONL validation and the DocVQA / ChartQA / TextVQA / InfoVQA / V*
converters from an HF save_to_disk folder, parquet, and each benchmark's own JSON + images."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers / datasets)
from awares_rl.commands.data import add_data_parsers
from awares_rl.core.sample import Sample, SampleError
from data_pipeline.datasets import ConvertError, convert, read_samples

METRICS = {"docvqa": "anls", "infovqa": "anls", "chartqa": "relaxed", "textvqa": "vqa", "vstar": "exact"}
VSTAR_TEXT = "What is the colour of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\nAnswer with the option's letter."


def _image(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


def _hf_rows(fmt: str) -> dict[str, list]:
    """Two records of ``fmt`` in its lmms-lab HF column layout."""
    images = [_image("red"), _image("blue")]
    if fmt in ("docvqa", "infovqa"):
        return {"questionId": ["q1", "q2"], "question": ["What?", "Who?"],
                "answers": [["a", "A"], ["b"]], "image": images}
    if fmt == "chartqa":
        return {"question": ["How much?", "Which?"], "answer": ["12", "x"], "type": ["human"] * 2,
                "image": images}
    if fmt == "textvqa":
        return {"question_id": [1, 2], "question": ["Brand?", "Text?"], "image_id": ["i1", "i2"],
                "answers": [["nike"] * 10, ["stop"] * 10], "image": images}
    return {"question_id": [0, 1], "text": [VSTAR_TEXT] * 2, "label": ["B", "A"],
            "category": ["direct_attributes"] * 2, "image": images}


def _hf_dataset(fmt: str):
    import datasets

    rows = _hf_rows(fmt)
    ds = datasets.Dataset.from_dict(rows)
    return ds.cast_column("image", datasets.Image())


def _native(fmt: str, root) -> str:
    """The benchmark's own annotation file (and images) under ``root``; returns its path."""
    if fmt == "docvqa":
        (root / "documents").mkdir()
        _image().save(root / "documents" / "d1.png")
        data = {"data": [{"questionId": 7, "question": "Date?", "answers": ["1999"],
                          "image": "documents/d1.png"}]}
        path = root / "val_v1.0.json"
    elif fmt == "infovqa":
        (root / "infographicsvqa_images").mkdir()
        _image().save(root / "infographicsvqa_images" / "i1.jpeg")
        data = {"data": [{"questionId": 9, "question": "Share?", "answers": ["40%"],
                          "image_local_name": "i1.jpeg"}]}
        path = root / "infographicsVQA_val.json"
    elif fmt == "chartqa":
        (root / "png").mkdir()
        _image().save(root / "png" / "c1.png")
        data = [{"imgname": "c1.png", "query": "Max?", "label": "41.5"}]
        path = root / "test_human.json"
    elif fmt == "textvqa":
        (root / "train_images").mkdir()
        _image().save(root / "train_images" / "abc.jpg")
        data = {"data": [{"question_id": 3, "question": "Word?", "image_id": "abc",
                          "answers": ["yes"] * 10}]}
        path = root / "TextVQA_0.5.1_val.json"
    else:
        (root / "direct_attributes").mkdir()
        _image().save(root / "direct_attributes" / "sa_1.jpg")
        (root / "direct_attributes" / "sa_1.json").write_text(json.dumps({"bbox": [[2, 3, 10, 5]]}))
        line = {"image": "direct_attributes/sa_1.jpg", "text": VSTAR_TEXT, "label": "B",
                "question_id": 0, "category": "direct_attributes"}
        (root / "test_questions.jsonl").write_text(json.dumps(line) + "\n")
        return str(root)
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("fmt", sorted(METRICS))
@pytest.mark.parametrize("form", ["hf_disk", "parquet", "native"])
def test_convert_each_form(fmt, form, tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    if form == "hf_disk":
        _hf_dataset(fmt).save_to_disk(str(src_dir / "ds"))
        src, n = src_dir / "ds", 2
    elif form == "parquet":
        _hf_dataset(fmt).to_parquet(str(src_dir / "test-00000.parquet"))
        src, n = src_dir / "test-00000.parquet", 2
    else:
        src, n = _native(fmt, src_dir), 1
    report = convert(fmt, src, tmp_path / "out")
    samples, _ = read_samples(report.path)  # also checks every image file exists
    assert report.written == n == len(samples) and report.skipped == 0
    assert all(s.metric == METRICS[fmt] for s in samples)
    with Image.open(samples[0].image_path(report.path)) as im:
        assert im.size == (40, 30)
    if fmt == "vstar":
        assert samples[0].answers == ("B", "blue")
        if form == "native":
            assert samples[0].evidence_boxes == ((2, 3, 12, 8),)
    if fmt == "textvqa":
        assert len(samples[0].answers) == 10


def test_bad_records_fail_or_skip_with_location(tmp_path):
    root = tmp_path / "vstar"
    root.mkdir()
    _native("vstar", root)
    good = (root / "test_questions.jsonl").read_text()
    bad_label = json.dumps({"image": "direct_attributes/sa_1.jpg", "text": "Q?", "label": "E"})
    missing = json.dumps({"image": "nowhere.jpg", "text": "Q?", "label": "A", "question_id": 5})
    (root / "test_questions.jsonl").write_text(good + "{not json\n" + bad_label + "\n" + missing + "\n")
    with pytest.raises(ConvertError, match=r"test_questions.jsonl:2: .*invalid JSON"):
        convert("vstar", root, tmp_path / "out")
    report = convert("vstar", root, tmp_path / "out", on_error="skip")
    assert report.written == 1 and report.skipped == 3
    assert ":3: field 'label'" in report.errors[1] and ":4: field 'image'" in report.errors[2]


def test_json_record_errors_name_the_record(tmp_path):
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"data": [{"questionId": 1, "answers": ["x"], "image": "a.png"}]}))
    with pytest.raises(ConvertError, match=r"val.json:record 0: field 'question'"):
        convert("docvqa", path, tmp_path / "out")


def test_sample_jsonl_validation_names_line_and_field(tmp_path):
    _image().save(tmp_path / "a.png")
    ok = Sample("s1", "a.png", "Q?", ("x",), ((0, 0, 4, 4),), "exact", True).to_line()
    lines = [ok, '{"id": "s2", "image": "a.png", "question": "Q?"}',
             ok.replace('"s1"', '"s3"').replace('"exact"', '"bleu"'),
             ok.replace('"s1"', '"s4"').replace("[0, 0, 4, 4]", "[4, 0, 1, 4]"),
             ok.replace('"s1"', '"s5"').replace("a.png", "missing.png"), "[1, 2", ok]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SampleError, match=r"s.jsonl:2: field 'answers': is missing"):
        read_samples(path)
    samples, report = read_samples(path, on_error="skip")
    assert [s.id for s in samples] == ["s1"] and report.skipped == 6
    expected = ["'answers'", "'metric'", "'evidence_boxes[0]'", "'image'", "'<line>'", "'id'"]
    for err, field, lineno in zip(report.errors, expected, range(2, 8)):
        assert f"s.jsonl:{lineno}: field {field}" in err


def test_sample_round_trip():
    s = Sample("a", "i.png", "Q?", ("x", "y"), ((1, 2, 3.5, 4),), "anls", False, {"k": 1})
    assert Sample.from_json(json.loads(s.to_line())) == s


def test_cli_convert_reports_skips(tmp_path, capsys):
    root = tmp_path / "vstar"
    root.mkdir()
    _native("vstar", root)
    with open(root / "test_questions.jsonl", "a") as f:
        f.write("{broken\n")
    parser = argparse.ArgumentParser(prog="awares-rl")
    add_data_parsers(parser.add_subparsers(dest="command"))
    base = ["data", "convert", "--format", "vstar", "--src", str(root), "--out", str(tmp_path / "o")]
    args = parser.parse_args(base)
    assert args.func(args) == 1 and "test_questions.jsonl:2" in capsys.readouterr().err
    args = parser.parse_args(base + ["--on-error", "skip"])
    assert args.func(args) == 0
    assert "skipped 1 malformed" in capsys.readouterr().out
