"""Cold-start SFT end to end on a tiny model: trajectories on disk -> `awares-rl sft` -> a model."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from awares_rl.commands.stages import add_sft_parser
from tests.conftest import DIRECT_Q, TOOL_Q, make_image

REPO = Path(__file__).resolve().parents[1]


def trajectory_line(i: int, tool: bool) -> dict:
    crops = [0, 4] if tool else []
    return {
        "id": f"t{i}", "image": f"images/{i}.png", "question": TOOL_Q if tool else DIRECT_Q,
        "answers": ["red" if tool else "blue"], "metric": "exact", "split": "train",
        "needs_crop": tool, "crop_ids": crops,
        "turns": ["GET_CROPS: ['0','4']", "red"] if tool else ["blue"],
        "low_res_answer": "x", "full_res_answer": "red" if tool else "blue",
        "low_res_score": 0.0 if tool else 1.0, "full_res_score": 1.0, "needs_high_res": tool,
    }


def write_trajectories(folder: Path, n: int, name: str = "train.jsonl") -> Path:
    """``n`` trajectories (tool call / direct answer alternating) with their images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        make_image(i, (224, 224 + 28 * (i % 3))).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps(trajectory_line(i, tool=i % 2 == 0)))
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def sft_overrides(tmp_path: Path, model_dir: Path, steps: int = 2, **extra: object) -> list[str]:
    data = tmp_path / "trajectories"
    if not (data / "train.jsonl").is_file():
        write_trajectories(data, 6)
        write_trajectories(data, 2, "val.jsonl")
    values = {
        "run.out_dir": tmp_path / "runs", "run.name": "t", "model.path": model_dir,
        "sft.train_file": data / "train.jsonl", "sft.val_file": data / "val.jsonl",
        "sft.steps": steps, "sft.batch_size": 4, "sft.lr": 1e-3, "sft.warmup_steps": 1,
        "learner.backend": "torch", "learner.use_ray": "false", "learner.micro_batch_size": 2,
        "logging.wandb": "false", **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def test_two_step_sft_smoke(tiny_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_sft_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sft", "--recipe", str(REPO / "recipes/tiny_cpu.yaml"), *sft_overrides(tmp_path, tiny_dir)])
    assert args.func(args) == 0
    out = tmp_path / "runs" / "t" / "models" / "sft"
    log = [json.loads(line) for line in (tmp_path / "runs/t/sft/metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) and r["train/target_tokens"] > 0 for r in train)
    assert any("val/loss" in r and math.isfinite(r["val/loss"]) for r in log)
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "trainer_state" / "state.json").is_file() and (out / "processor_config.json").is_file()
