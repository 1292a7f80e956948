"""``awares-rl data split``: one converted JSONL -> train/val/test, seeded, an image's questions in
one split, images left in place (paths still resolve), nothing overwritten."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers / datasets)
from awares_rl.commands.data import add_data_parsers
from data_pipeline.datasets import convert, read_samples
from data_pipeline.split import split_file, split_sizes


@pytest.fixture
def converted(tmp_path):
    """DocVQA, 5 documents with 2 questions each, converted to tmp_path/conv/docvqa.jsonl."""
    (tmp_path / "src" / "documents").mkdir(parents=True)
    records = []
    for d in range(5):
        Image.new("RGB", (32, 24), (50 * d, 10, 10)).save(tmp_path / "src" / "documents" / f"d{d}.png")
        records += [{"questionId": 2 * d + q, "question": f"Q{q} about d{d}?", "answers": [str(d)],
                     "image": f"documents/d{d}.png"} for q in range(2)]
    (tmp_path / "src" / "val.json").write_text(json.dumps({"data": records}))
    return convert("docvqa", tmp_path / "src" / "val.json", tmp_path / "conv").path


def _split(folder):
    return {name: read_samples(folder / f"{name}.jsonl")[0] for name in ("train", "val", "test")}


def test_split_by_image_seeded_and_resolving(converted, tmp_path):
    assert split_file(converted, converted.parent, fractions=(0.6, 0.2, 0.2), seed=3) == {"train": 6, "val": 2, "test": 2}
    splits = _split(converted.parent)  # read_samples checks every image exists below the folder
    images = {name: {s.image for s in part} for name, part in splits.items()}
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])
    assert sorted(s.id for p in splits.values() for s in p) == sorted(s.id for s in read_samples(converted)[0])

    again = tmp_path / "again"
    shutil.copytree(converted.parent, again, ignore=shutil.ignore_patterns("train.jsonl", "val.jsonl", "test.jsonl"))
    split_file(again / converted.name, again, fractions=(0.6, 0.2, 0.2), seed=3)
    assert {k: [s.id for s in v] for k, v in _split(again).items()} == {k: [s.id for s in v] for k, v in splits.items()}
    other = tmp_path / "other"
    shutil.copytree(again, other, ignore=shutil.ignore_patterns("train.jsonl", "val.jsonl", "test.jsonl"))
    split_file(other / converted.name, other, fractions=(0.6, 0.2, 0.2), seed=4)
    assert {k: [s.id for s in v] for k, v in _split(other).items()} != {k: [s.id for s in v] for k, v in splits.items()}


def test_split_above_the_images_and_counts(converted, tmp_path):
    sizes = split_file(converted, tmp_path, counts=(3, 1, 0), by="sample")
    assert sizes == {"train": 3, "val": 1, "test": 0} and not (tmp_path / "test.jsonl").exists()
    train = read_samples(tmp_path / "train.jsonl")[0]
    assert all(s.image.startswith("conv/images/") for s in train)


def test_split_refuses_overwrite_and_bad_sizes(converted, tmp_path):
    with pytest.raises(ValueError, match="is not below it; write the splits into"):
        split_file(converted, tmp_path / "elsewhere", fractions=(0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="summing to 1, e.g. 0.8,0.1,0.1"):
        split_sizes(10, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match="summing to 1..10"):
        split_sizes(10, counts=(8, 2, 1))
    assert split_sizes(10, fractions=(0.75, 0.15, 0.1)) == [8, 1, 1]  # largest remainders round up
    split_file(converted, converted.parent, fractions=(0.8, 0.1, 0.1))
    with pytest.raises(FileExistsError, match="train.jsonl exists: split into a fresh --out folder"):
        split_file(converted, converted.parent, fractions=(0.8, 0.1, 0.1))


def test_cli_split(converted, capsys):
    parser = argparse.ArgumentParser(prog="awares-rl")
    add_data_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "split", "--src", str(converted), "--fractions", "0.8,0.1,0.1", "--seed", "1"])
    assert args.func(args) == 0 and "train 6, val 2, test 2"  # whole documents: 3 / 1 / 1 of 5 in capsys.readouterr().out
    assert args.func(args) == 1 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "split", "--src", str(converted), "--fractions", "a,b,c"])
