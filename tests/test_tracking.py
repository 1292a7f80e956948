"""Tracker against a real offline W&B run (decoded from its run-<id>.wandb file), episode_metrics
on hand-computed values, and the crop boxes drawn on the low-res view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageColor

from awares_rl.core.episode import Episode, RewardParts
from awares_rl.tracking import (
    CROP_COLOURS,
    EPISODE_COLUMNS,
    RUN_ID_FILE,
    Tracker,
    draw_crop_boxes,
    episode_metrics,
    grid_title,
)
from awares_rl.wandb_offline import (
    iter_records,
    read_offline_config,
    read_offline_run,
    read_offline_summary,
    run_files,
)

pytestmark = pytest.mark.usefixtures("wandb_sandbox")  # conftest: W&B files in tmp_path


def make_episode(
    sample_id: str,
    crop_ids: list[int],
    action_mask: list[int],
    turns: int,
    reward: RewardParts | None,
    **kw,
) -> Episode:
    """A 400x300 original seen as a 200x150 low-res view, plus one 200x150 image per crop."""
    crops = [Image.new("RGB", (200, 150))] * len(crop_ids)
    images = kw.pop("images", [Image.new("RGB", (200, 150), "white"), *crops])
    return Episode(
        sample_id=sample_id, question=f"q {sample_id}?", answers=["red", "crimson"],
        metric="exact", image_size=(400, 300), turn_texts=[f"t{i}" for i in range(turns)],
        token_ids=list(range(len(action_mask))), action_mask=action_mask,
        logprobs=[0.0] * len(action_mask), images=images, crop_ids=crop_ids, reward=reward, **kw,
    )  # fmt: skip


def hand_episodes() -> list[Episode]:
    return [
        # crops 0 and 4, right answer: R = 1.0 - 0.1 + 0
        make_episode("a", [0, 4], [0, 0, 1, 1, 1, 0, 1, 1], 2,
                     RewardParts(1.0, 0.1, 0.0, 0.9, "exact"),
                     rtr=0.5, visual_tokens=120, final_answer="red", needs_high_res=True),
        make_episode("b", [], [0, 1, 1, 1], 1, RewardParts(0.0, 0.0, 0.0, 0.0, "exact"),
                     rtr=0.25, visual_tokens=40, final_answer="blue", truncated=True,
                     needs_high_res=True),
        make_episode("c", [], [0, 1, 1, 1, 1], 1, RewardParts(0.0, 0.0, -0.5, -0.5, "exact"),
                     rtr=0.25, visual_tokens=40, invalid_tool_call="bad crop id",
                     needs_high_res=False),
        make_episode("d", [], [], 0, None, error="unreadable image", images=[], needs_high_res=True),
        # ran, not scored (e.g. the judge timed out)
        make_episode("e", [1], [0, 1, 1], 2, None, rtr=0.5, visual_tokens=80, final_answer="red"),
    ]  # fmt: skip


def staged_artifact(run_dir, name: str) -> dict[str, Path]:
    """Entry path -> staged local file of the artifact ``name`` logged by the offline run."""
    for record in iter_records(run_dir):
        if record.WhichOneof("record_type") == "artifact" and record.artifact.name == name:
            return {c.path: Path(c.local_path) for c in record.artifact.manifest.contents}
    raise AssertionError(f"no artifact {name} in the run file")


def test_episode_metrics_hand_computed():
    m = episode_metrics(hand_episodes())
    # 5 episodes, 1 error (d); ran: a, b, c, e; scored: a, b, c
    expected = {
        "episodes": 5.0,
        "error_rate": 1 / 5,
        "reward_total": (0.9 + 0.0 - 0.5) / 3,  # 0.1333
        "answer_score": (1.0 + 0.0 + 0.0) / 3,
        "crop_cost": (0.1 + 0.0 + 0.0) / 3,
        "format_reward": (0.0 + 0.0 - 0.5) / 3,
        "crop_rate": 2 / 4,  # a, e
        "crop_rate_needed": 1 / 2,  # a of a, b (d needed one too, but did not run)
        "crop_rate_not_needed": 0 / 1,  # c; e has no label
        "num_crops": (2 + 0 + 0 + 1) / 4,  # 0.75
        "rtr": (0.5 + 0.25 + 0.25 + 0.5) / 4,  # 0.375
        "visual_tokens": (120 + 40 + 40 + 80) / 4,  # 70
        "invalid_tool_call_rate": 1 / 4,  # c
        "truncation_rate": 1 / 4,  # b
        "response_tokens": (5 + 3 + 4 + 2) / 4,  # sum(action_mask): 3.5
        "turns": (2 + 1 + 1 + 2) / 4,  # 1.5
    }
    assert m == pytest.approx(expected)


def test_episode_metrics_all_errors_gives_nan_means():
    m = episode_metrics([make_episode("d", [], [], 0, None, error="x")])
    assert m["error_rate"] == 1.0 and m["episodes"] == 1.0
    assert m["rtr"] != m["rtr"] and m["reward_total"] != m["reward_total"]  # NaN


def test_draw_crop_boxes_scales_boxes_onto_low_res_view():
    low = Image.new("RGB", (200, 150), "white")
    out = draw_crop_boxes(low, (400, 300), [0, 4])
    rgb = [Image.new("RGB", (1, 1), c).getpixel((0, 0)) for c in CROP_COLOURS]
    # crop 0 (top-left): (0, 0, 200, 150) in the original -> (0, 0, 99, 74) on the view
    assert out.getpixel((60, 0)) == rgb[0] and out.getpixel((99, 60)) == rgb[0]
    assert out.getpixel((60, 75)) == (255, 255, 255)
    # crop 4 (centre): (100, 75, 300, 225) -> (50, 38, 149, 111)
    assert out.getpixel((149, 80)) == rgb[4] and out.getpixel((100, 111)) == rgb[4]
    assert out.getpixel((175, 130)) == (255, 255, 255)
    assert low.getpixel((60, 0)) == (255, 255, 255)  # the episode's image is untouched


def test_offline_run_records_metrics_table_and_summary(tmp_path, wandb_sandbox):
    run_dir = tmp_path / "run"
    config = {"lr": 0.001, "rollout": {"group_size": 4}}
    episodes = hand_episodes()
    with Tracker("awares-test", "t1", run_dir, config, mode="offline") as tracker:
        tracker.log({"loss": 0.5, "reward_total": 0.25}, step=1)
        tracker.log({"loss": 0.125}, step=2)
        tracker.log_episodes(episodes, step=2, max_rows=4)
        tracker.log_accuracy_vs_rtr({"low_res": (0.4, 0.25), "grpo": (0.6, 0.41)}, step=2)
        # > 64 KiB: one record split over three 32 KiB blocks (FIRST, MIDDLE, LAST chunks)
        tracker.summary({"final_accuracy": 0.6, "notes": "x" * 80_000})

    assert list(wandb_sandbox.iterdir()) == []  # nothing landed in the CWD
    rows = read_offline_run(run_dir)
    assert [r["_step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and rows[0]["reward_total"] == 0.25
    assert rows[1]["loss"] == 0.125
    table = rows[1]["episodes"]
    assert table["_type"] == "table-file"
    assert (table["nrows"], table["ncols"]) == (4, len(EPISODE_COLUMNS))
    assert rows[1]["accuracy_vs_rtr_table"]["_type"] == "table-file"

    # the table itself is a run_table artifact staged under WANDB_DATA_DIR, images included
    staged = staged_artifact(run_dir, f"run-{tracker.run_id}-episodes")
    logged = json.loads(staged["episodes.table.json"].read_text())
    assert logged["columns"] == list(EPISODE_COLUMNS)
    first = dict(zip(logged["columns"], logged["data"][0]))
    assert first["sample_id"] == "a" and first["crops"] == "0:top-left, 4:center"
    assert first["reward_total"] == 0.9 and first["gold_answers"] == "red | crimson"
    assert first["turns"] == "[turn 1] t0\n[turn 2] t1"
    assert first["image"]["_type"] == "image-file"
    assert first["image"]["caption"] == "top-left, center"
    image = Image.open(staged[first["image"]["path"]]).convert("RGB")
    assert image.size == (200, 150)
    assert image.getpixel((60, 0)) == Image.new("RGB", (1, 1), CROP_COLOURS[0]).getpixel((0, 0))
    errored = dict(zip(logged["columns"], logged["data"][3]))
    assert errored["image"] is None and errored["flags"] == "error: unreadable image"

    plot = staged_artifact(run_dir, f"run-{tracker.run_id}-accuracy_vs_rtr_table")
    points = json.loads(plot["accuracy_vs_rtr_table.table.json"].read_text())
    assert points["columns"] == ["mode", "rtr", "accuracy"]
    assert points["data"] == [["low_res", 0.25, 0.4], ["grpo", 0.41, 0.6]]

    summary = read_offline_summary(run_dir)
    assert summary["final_accuracy"] == 0.6 and summary["notes"] == "x" * 80_000
    assert read_offline_config(run_dir) == config
    run_record = next(r.run for r in iter_records(run_dir) if r.WhichOneof("record_type") == "run")
    assert run_record.run_id == tracker.run_id and run_record.display_name == "t1"

    (file,) = run_files(run_dir)
    corrupt = tmp_path / "corrupt.wandb"
    data = bytearray(file.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        read_offline_run(corrupt)


def test_resume_continues_the_same_run(tmp_path):
    run_dir = tmp_path / "run"
    first = Tracker("awares-test", "t", run_dir, {}, mode="offline")
    first.log({"loss": 1.0}, step=1)
    first.finish()
    assert (run_dir / RUN_ID_FILE).read_text().strip() == first.run_id

    second = Tracker("awares-test", "t", run_dir, {}, mode="offline")  # id read from run_dir
    second.log({"loss": 0.5}, step=2)
    second.finish()
    assert second.run_id == first.run_id
    files = run_files(run_dir)
    assert [f.name for f in files] == [f"run-{first.run_id}.wandb"] * 2
    assert [(r["_step"], r["loss"]) for r in read_offline_run(run_dir)] == [(1, 1.0), (2, 0.5)]


def test_explicit_resume_id_and_wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))  # wins over run_dir for W&B files
    tracker = Tracker(
        "awares-test", "t", tmp_path / "run", {}, mode="offline", resume_id="abc12345"
    )
    tracker.finish()
    assert (tmp_path / "run" / RUN_ID_FILE).read_text().strip() == "abc12345"
    assert [f.name for f in run_files(tmp_path / "wandb_dir")] == ["run-abc12345.wandb"]
    assert not (tmp_path / "run" / "wandb").exists()


def test_disabled_mode_writes_nothing_and_online_needs_a_key(tmp_path):
    tracker = Tracker("awares-test", "t", tmp_path / "run", {}, mode="disabled")
    tracker.log({"loss": 1.0}, step=1)
    tracker.log_episodes(hand_episodes(), step=1)
    tracker.log_accuracy_vs_rtr({"grpo": (0.5, 0.3)}, step=1)
    tracker.summary({"a": 1})
    tracker.finish()
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="WANDB_API_KEY"):
        Tracker("awares-test", "t", tmp_path / "run", {}, mode="online")
    with pytest.raises(ValueError, match="not one of"):
        Tracker("awares-test", "t", tmp_path / "run", {}, mode="shared")  # type: ignore[arg-type]


def test_final_results_reach_wandb_and_png(tmp_path):
    from awares_rl.plots import accuracy_vs_rtr, learning_curves

    rows = {"low_res": {"accuracy": 85.0, "rtr": 0.25, "visual_tokens": 60.0, "grounding": 95.0},
            "grpo": {"accuracy": 99.0, "rtr": 0.29, "visual_tokens": 70.0, "crop_rate": 17.0,
                     "crop_jaccard": 0.9, "tool_call_validity": 100.0}}
    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "grpo" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "rollout/rtr": 0.3 - 0.01 * s, "learner/clip_fraction": 0.1})
                + "\n" for s in (1, 2, 3)))
    scatter = accuracy_vs_rtr(rows, run / "accuracy_vs_rtr.png")
    curves = learning_curves(run, run / "learning_curves.png")  # stages without logs draw empty
    assert Image.open(scatter).size[0] > 300 and Image.open(curves).size[0] > 1000
    with Tracker("awares-test", "t-eval", run / "eval", {}, mode="offline") as tracker:
        tracker.log_results(rows, images={"accuracy_vs_rtr_png": scatter})
    logged = read_offline_run(run / "eval")[0]
    assert logged["results"]["_type"] == "table-file" and logged["results"]["nrows"] == 2
    assert logged["accuracy_vs_rtr_png"]["_type"] == "image-file"
    summary = read_offline_summary(run / "eval")
    assert summary["grpo/crop_jaccard"] == 0.9 and summary["low_res/grounding"] == 95.0
    assert "low_res/crop_jaccard" not in summary  # absent values are not logged as null


def test_episode_views_survive_offline_as_png_files(tmp_path):
    """The table's image cells are lost offline (wandb#4611); the ``episodes_images`` list beside
    it is written as PNG files in the run's files/media/images, and the grid PNG in the run dir."""
    run_dir, grid = tmp_path / "run", tmp_path / "run" / "episodes.png"
    with Tracker("awares-test", "t", run_dir, {}, mode="offline") as tracker:
        tracker.log_episodes(hand_episodes(), step=3, grid=grid)
    (row,) = read_offline_run(run_dir)
    logged = row["episodes_images"]
    assert logged["_type"] == "images/separated" and logged["count"] == 4  # d has no image
    assert logged["captions"] == ["top-left, center", "low-res only", "low-res only", "top-right"]
    (offline,) = run_dir.glob("wandb/offline-run-*")
    files = sorted((offline / "files").glob(f"{logged['filenames'][0].rsplit('/', 1)[0]}/*.png"))
    # b and c are the same white view: one file (named by its hash) serves both
    assert [str(f.relative_to(offline / "files")) for f in files] == sorted(set(logged["filenames"]))
    assert len(files) == 3
    first = Image.open(offline / "files" / logged["filenames"][0]).convert("RGB")
    assert first.size == (200, 150) and first.getpixel((60, 0)) == ImageColor.getrgb(CROP_COLOURS[0])
    assert Image.open(grid).size[0] > 4 * 150  # four views side by side
    assert grid_title(hand_episodes()[0], "top-left, center") == "a: top-left, center\n-> red  R 0.90"


def test_grid_is_kept_without_wandb(tmp_path):
    tracker = Tracker("awares-test", "t", tmp_path / "run", {}, mode="disabled")
    tracker.log_episodes(hand_episodes()[3:], step=1, grid=tmp_path / "grid.png")  # d: no image, e: one
    assert Image.open(tmp_path / "grid.png").size[0] > 150
    tracker.log_episodes(hand_episodes()[3:4], step=2, grid=tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()  # nothing to draw
