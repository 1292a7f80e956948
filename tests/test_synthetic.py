"""The synthetic benchmark: determinism, split disjointness, evidence boxes, low-res loss of
small details, resume, config validation, and the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

import awares_rl  # noqa: F401  (torchvision shim before transformers / datasets)
from awares_rl.commands.data import add_data_parsers
from awares_rl.core.crops import boxes_to_crops, crop_box, low_res_view
from data_pipeline.config import SynthConfig
from data_pipeline.datasets import load_hf_dataset, read_samples
from data_pipeline.render import PALETTE
from data_pipeline.scene import locate_questions, make_scene, sample_seed
from data_pipeline.synthetic import generate, split_overlap

CFG = SynthConfig(count_weight=0.2, digit_weight=0.1)


def _scenes(split: str, n: int, cfg: SynthConfig = CFG):
    return [make_scene(0, split, i, cfg) for i in range(n)]


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", 6, seed=3, split="val", progress=False)
    b = generate(tmp_path / "b", 6, seed=3, split="val", progress=False)
    assert a.read_bytes() == b.read_bytes()
    for line in a.read_text().splitlines():
        image = json.loads(line)["image"]
        assert (a.parent / image).read_bytes() == (b.parent / image).read_bytes()
    c = generate(tmp_path / "c", 6, seed=4, split="val", progress=False)
    assert c.read_bytes() != a.read_bytes()


def test_splits_are_disjoint(tmp_path):
    assert len({sample_seed(0, s, i) for s in ("train", "val", "test") for i in range(500)}) == 1500
    train = generate(tmp_path, 12, split="train", progress=False)
    val = generate(tmp_path, 12, split="val", progress=False)
    assert split_overlap(train, val) == {"images": [], "pairs": []}
    assert split_overlap(train, train)["images"]  # the check does see a leak


def test_evidence_box_lies_on_the_answering_detail():
    for sample, image in _scenes("train", 40):
        pixels = np.asarray(image).astype(int)
        panel = sample.meta["panels"][sample.meta["panel"]]
        colour = np.array(PALETTE[panel["colour"]])
        px1, py1, px2, py2 = panel["panel_box"]
        inside_panel = np.zeros(pixels.shape[:2], bool)
        inside_panel[py1:py2, px1:px2] = True
        in_box = np.zeros_like(inside_panel)
        for x1, y1, x2, y2 in sample.evidence_boxes:
            assert px1 <= x1 < x2 <= px2 and py1 <= y1 < y2 <= py2
            region = pixels[int(y1):int(y2), int(x1):int(x2)]
            assert np.abs(region - colour).sum(-1).max() > 60  # the detail differs from the panel
            in_box[int(y1):int(y2), int(x1):int(x2)] = True
        outside = pixels[inside_panel & ~in_box]
        assert np.abs(outside - colour).sum(-1).max() == 0  # the rest of the panel is plain


def test_evidence_maps_to_the_panels_quadrant_crop():
    for sample, _ in _scenes("val", 30):
        w, h = sample.meta["width"], sample.meta["height"]
        quadrant = sample.meta["panels"][sample.meta["panel"]]["quadrant"]
        assert boxes_to_crops(w, h, sample.evidence_boxes) == [quadrant]


def test_locate_questions_name_each_panels_quadrant():
    for sample, image in _scenes("val", 20):
        pairs = locate_questions(sample)
        assert len(pairs) == len(sample.meta["panels"]) >= 1  # the panels with a detail, not plain ones
        pixels = np.asarray(image).astype(int)
        for (question, answer), panel in zip(pairs, sample.meta["panels"]):
            assert panel["colour"] in question and answer == str(panel["quadrant"])
            x1, y1, x2, y2 = crop_box(image.width, image.height, panel["quadrant"])
            quadrant = pixels[y1:y2, x1:x2].reshape(-1, 3)  # the panel's colour fills part of it
            assert (np.abs(quadrant - PALETTE[panel["colour"]]).sum(-1) == 0).mean() > 0.05  # the rim at least


def _interior_std(image: Image.Image, box, scale: float) -> float:
    x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
    region = np.asarray(image).astype(float)[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3]
    return float(region.std(axis=(0, 1)).max())


def test_low_res_loses_small_details_and_keeps_large_ones():
    cfg = SynthConfig(small_detail_share=0.5, medium_detail_share=0.0, pattern_weight=1.0, shape_weight=0.0)
    seen = {"small": 0, "large": 0}
    for sample, image in _scenes("train", 16, cfg):
        box, tier = sample.evidence_boxes[0], sample.meta["tier"]
        seen[tier] += 1
        full, low = _interior_std(image, box, 1.0), _interior_std(low_res_view(image), box, 0.5)
        assert full > 40  # a high-contrast texture at full resolution
        if tier == "small":
            assert sample.needs_high_res and low < 1.0  # flat: the 1-px texture averaged away
        else:
            assert not sample.needs_high_res and low > 30  # 4-px cells survive the 0.5 view
    assert seen["small"] and seen["large"]


def test_tier_shares_and_sizes_follow_the_config():
    scenes = _scenes("train", 300, SynthConfig())
    tiers = [s.meta["tier"] for s, _ in scenes]
    for start in range(0, 300, 50):  # every block of tier_block (50) holds the shares exactly
        block = tiers[start : start + 50]
        assert (block.count("small"), block.count("medium")) == (4, 5)  # 0.08 and 0.10 of 50
    assert tiers[:50] != tiers[50:100]  # in a seeded order, not one fixed pattern
    assert [s.meta["tier"] for s, _ in _scenes("test", 50, SynthConfig())] != tiers[:50]
    for _, im in scenes:  # Qwen3-VL's 32-px tokens: sides multiples of 64
        assert 448 <= im.width <= 640 and 448 <= im.height <= 640 and im.width % 64 == 0


def test_tier_block_zero_draws_each_tier_independently():
    """tier_block 0: the shares hold on average only; every other draw of a sample is the same."""
    free, dealt = SynthConfig(tier_block=0), SynthConfig()
    pairs = list(zip(_scenes("train", 300, free), _scenes("train", 300, dealt)))
    tiers = [a.meta["tier"] for (a, _), _ in pairs]
    assert 0.04 < tiers.count("small") / 300 < 0.13 and 0.06 < tiers.count("medium") / 300 < 0.15
    assert any(a.meta["tier"] != b.meta["tier"] for (a, _), (b, _) in pairs)
    for (a, ia), (b, ib) in pairs:
        assert (a.meta["width"], a.meta["height"], a.meta["layout"]) == (b.meta["width"], b.meta["height"], b.meta["layout"])
        if a.meta["tier"] == b.meta["tier"]:  # same tier: the same image, byte for byte
            assert ia.tobytes() == ib.tobytes() and a.answers == b.answers


def read_texture(image: Image.Image, box, scale: float) -> str | None:
    """A pixel-statistics reader of a swatch: which neighbours differ (rows: horizontal stripes,
    columns: vertical, both: checker); None when the swatch is flat."""
    x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
    region = np.asarray(image).astype(float)[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].mean(-1)
    across_rows = np.abs(np.diff(region, axis=0)).mean()
    across_cols = np.abs(np.diff(region, axis=1)).mean()
    if max(across_rows, across_cols) < 3:
        return None
    if min(across_rows, across_cols) > 0.5 * max(across_rows, across_cols):
        return "checker"
    return "horizontal" if across_rows > across_cols else "vertical"


def test_medium_tier_reads_right_at_low_res_only_sometimes():
    cfg = SynthConfig(small_detail_share=0.2, medium_detail_share=0.6)
    seen = {"small": 0, "medium": 0, "medium_wrong": 0}
    for sample, image in _scenes("train", 60, cfg):
        box, tier, answer = sample.evidence_boxes[0], sample.meta["tier"], sample.answers[0]
        low = read_texture(low_res_view(image), box, 0.5)
        if tier == "large":
            continue
        seen[tier] += 1
        cut = image.crop((0, 0, image.width, image.height))
        assert read_texture(cut, box, 1.0) == answer  # the 1-px texture rules at full resolution
        if tier == "small":
            assert low is None and sample.needs_high_res  # averaged away at low res
        else:  # the echo survives the 0.5 view; it is the answer only when the oracle says so
            assert low is not None and (low == answer) == (not sample.needs_high_res)
            seen["medium_wrong"] += low != answer
    assert seen["small"] and seen["medium"] >= 20
    assert 0.2 < seen["medium_wrong"] / seen["medium"] < 0.6  # medium_echo_truth = 0.6


def _low_res_brightness(image: Image.Image, box) -> float:
    x1, y1, x2, y2 = (v // 2 for v in box)
    return float(np.asarray(low_res_view(image)).astype(float)[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].mean())


@pytest.mark.parametrize("fine_dark", [0.3, 0.0])
def test_fine_dark_darkens_the_low_res_tint_of_fine_textures_only(fine_dark):
    cfg = SynthConfig(small_detail_share=0.4, medium_detail_share=0.2, fine_dark=fine_dark)
    rel = {"small": [], "medium": [], "large": []}
    for sample, image in _scenes("train", 40, cfg):
        panel, box = sample.meta["panels"][sample.meta["panel"]], sample.evidence_boxes[0]
        colour = float(np.mean(PALETTE[panel["colour"]]))
        rel[sample.meta["tier"]].append(_low_res_brightness(image, box) / colour)
        low = read_texture(low_res_view(image), box, 0.5)
        if sample.meta["tier"] == "small":  # still unreadable at low res, read at full res
            assert low is None and read_texture(image, box, 1.0) == sample.answers[0]
        if sample.meta["tier"] == "medium":  # the echo still decides the low-res reading
            assert low is not None and (low == sample.answers[0]) == (not sample.needs_high_res)
    assert all(rel.values())
    large = np.mean(rel["large"])
    assert abs(large - 0.65) < 0.03  # (1 + DARK) / 2 whatever fine_dark is
    for tier in ("small", "medium"):  # (1 + fine_dark) / 2, less for the echo's clipping
        assert abs(np.mean(rel[tier]) - (1 + fine_dark) / 2) < 0.05, tier


def test_resume_keeps_existing_and_fills_the_rest(tmp_path):
    path = generate(tmp_path, 5, progress=False)
    first = path.read_text().splitlines()
    (tmp_path / "images" / "train-000003.png").unlink()  # an interrupted run: image missing
    path.write_text("\n".join(first[:4]) + '\n{"id": "train-0000')  # ...and a torn last line
    mtime = (tmp_path / "images" / "train-000000.png").stat().st_mtime_ns
    generate(tmp_path, 8, progress=False)
    samples, _ = read_samples(path)
    assert [s.id for s in samples] == [f"train-{i:06d}" for i in range(8)]
    assert path.read_text().splitlines()[:5] == first  # regenerated bytes are identical
    assert (tmp_path / "images" / "train-000000.png").stat().st_mtime_ns == mtime  # kept
    with pytest.raises(ValueError, match="other settings"):
        generate(tmp_path, 8, seed=1, progress=False)


def test_process_pool_backend_matches_serial(tmp_path):
    a = generate(tmp_path / "a", 70, workers=2, backend="process", progress=False)
    b = generate(tmp_path / "b", 70, backend="serial", progress=False)
    assert a.read_bytes() == b.read_bytes()


def test_ray_backend_matches_serial(tmp_path):
    """Ray tasks (a local Ray started and stopped by generate: ~10 s) write the same bytes."""
    a = generate(tmp_path / "a", 40, workers=2, backend="ray", progress=False)
    b = generate(tmp_path / "b", 40, backend="serial", progress=False)
    assert a.read_bytes() == b.read_bytes()


def test_loads_as_hf_dataset(tmp_path):
    ds = load_hf_dataset(generate(tmp_path, 3, progress=False))
    assert len(ds) == 3 and ds[0]["image"].size[0] >= 448
    assert ds[0]["metric"] == "exact" and len(ds[0]["evidence_boxes"][0]) == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_side": 450}, "min_side"),
        ({"side_step": 28}, "side_step"),
        ({"side_step": 60}, "side_step"),
        ({"small_detail_share": 1.5}, "small_detail_share"),
        ({"large_cell": 1}, "large_cell"),
        ({"pattern_weight": 0.0, "shape_weight": 0.0}, "pattern_weight"),
        ({"pattern_weight": 0.0, "colour_weight": 1.0, "medium_detail_share": 0.0}, "small_detail_share"),
        ({"pattern_weight": 0.0, "colour_weight": 1.0, "small_detail_share": 0.0}, "medium_detail_share"),
        ({"small_detail_share": 0.6, "medium_detail_share": 0.6}, "medium_detail_share"),
        ({"small_detail_share": 0.07}, "tier_block"),
        ({"medium_echo_truth": 1.5}, "medium_echo_truth"),
        ({"medium_echo_cell": 3}, "medium_echo_cell"),
        ({"fine_dark": 1.0}, "fine_dark"),
        ({"min_side": 640, "max_side": 448}, "min_side"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_cli_synth(tmp_path):
    parser = argparse.ArgumentParser(prog="awares-rl")
    add_data_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "synth", "--out", str(tmp_path), "--n", "3", "--seed", "1", "--split", "test",
         "--set", "max_side=576"]
    )
    assert args.func(args) == 0
    samples, _ = read_samples(tmp_path / "test.jsonl")
    assert len(samples) == 3 and all(s.meta["width"] <= 576 for s in samples)
