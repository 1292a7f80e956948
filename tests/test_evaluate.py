"""`awares-rl eval` on the tool-using tiny model: three modes, accuracy, RTR, visual tokens,
tool-call validity and crop decisions against trajectory labels."""

from __future__ import annotations

import argparse
import json

import pytest

from awares_rl.commands.stages import add_eval_parser
from awares_rl.core.crops import cut_crops, low_res_view, retained_token_ratio
from awares_rl.core.tokens import image_token_counts
from awares_rl.models import load_processor
from tests.conftest import TOOL_Q, episode_inputs
from tests.test_sft import REPO, trajectory_line


@pytest.fixture
def eval_files(tmp_path):
    """The four taught (question, image) pairs as a sample file and a trajectory (label) file."""
    (tmp_path / "images").mkdir()
    samples, labels = [], []
    for i, (q, image) in enumerate(episode_inputs()):
        image.save(tmp_path / "images" / f"{i}.png")
        tool = q == TOOL_Q
        samples.append({"id": f"t{i}", "image": f"images/{i}.png", "question": q,
                        "answers": ["red" if tool else "blue"], "metric": "exact"})
        labels.append(trajectory_line(i, tool))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (tmp_path / "traj.jsonl").write_text("".join(json.dumps(t) + "\n" for t in labels))
    return tmp_path


def test_eval_three_modes(tool_model_dir, eval_files, capsys):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    out = eval_files / "report.json"
    args = parser.parse_args([
        "eval", "--recipe", str(REPO / "recipes/tiny_cpu.yaml"), "--checkpoint", str(tool_model_dir),
        "--data", str(eval_files / "test.jsonl"), "--trajectories", str(eval_files / "traj.jsonl"),
        "--out", str(out), "rollout.backend=hf", "eval.batch_size=3", "eval.max_new_tokens=16",
        f"run.out_dir={eval_files}",
    ])
    assert args.func(args) == 0
    shown = capsys.readouterr()
    assert "AwaRes evaluation" in shown.out
    for mode in ("low", "full", "policy"):  # a progress bar per mode, samples done (batches of 3)
        assert f"eval {tool_model_dir.name}: {mode}: 100%" in shown.err and "4/4" in shown.err
    report = json.loads(out.read_text())
    low, full, policy = (report["summary"][m] for m in ("low", "full", "policy"))
    images = [im for _, im in episode_inputs()]
    proc = load_processor(tool_model_dir)
    full_tokens = image_token_counts(proc.image_processor, images)
    low_tokens = image_token_counts(proc.image_processor, [low_res_view(im) for im in images])

    # The taught policy: TOOL_Q -> GET_CROPS: ['0','4'] -> "red"; DIRECT_Q -> "blue".
    assert policy["accuracy"] == 100.0 and policy["by_metric"] == {"exact": {"accuracy": 100.0, "n": 4}}
    assert policy["crop_rate"] == 50.0 and policy["tool_call_validity"] == 100.0
    assert policy["crop_decision_accuracy"] == 100.0 and policy["crop_jaccard"] == 1.0
    rtrs = [retained_token_ratio(im.width, im.height, [0, 4] if i % 2 == 0 else []) for i, im in enumerate(images)]
    assert policy["rtr"] == pytest.approx(sum(rtrs) / 4)
    crop_tokens = [image_token_counts(proc.image_processor, cut_crops(im, [0, 4])) for im in images]
    policy_tokens = [lt + (sum(ct) if i % 2 == 0 else 0) for i, (lt, ct) in enumerate(zip(low_tokens, crop_tokens))]
    assert [p["visual_tokens"] for p in report["samples"]["policy"]] == policy_tokens

    assert low["rtr"] == 0.25 and full["rtr"] == 1.0 and full["visual_token_ratio"] == 1.0
    assert [p["visual_tokens"] for p in report["samples"]["low"]] == low_tokens
    assert [p["visual_tokens"] for p in report["samples"]["full"]] == full_tokens
    assert "tool_call_validity" not in low and "crop_decision_accuracy" not in full
    assert all(s["seconds_per_sample"] > 0 for s in (low, full, policy))


def _policy_preds(cfg, checkpoint, files, engine=None):
    from awares_rl.evaluate import evaluate

    report = evaluate(cfg, checkpoint, files / "test.jsonl", files / "traj.jsonl", engine=engine)
    return [{k: p[k] for k in ("answer", "crop_ids", "visual_tokens", "tool_call")} for p in report["samples"]["policy"]]


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_one_engine_serves_each_checkpoint_in_turn(backend, tiny_dir, tool_model_dir, eval_files):
    # the final table's way: an engine started on one model (here untrained), switched to another
    # of the same architecture by loading its weights, predicts what a fresh engine of it does
    from awares_rl.config import load_recipe
    from awares_rl.rollout import make_engine, same_serving, switch_engine

    cfg = load_recipe(REPO / "recipes/tiny_cpu.yaml", [f"rollout.backend={backend}", "rollout.fallback_to_hf=false",
                                                       "eval.modes=[policy]", "eval.max_new_tokens=16"])
    fresh = _policy_preds(load_recipe(REPO / "recipes/tiny_cpu.yaml", ["rollout.backend=hf", "eval.modes=[policy]",
                                                                      "eval.max_new_tokens=16"]),
                          tool_model_dir, eval_files)
    assert same_serving(tiny_dir, tool_model_dir)
    engine = make_engine(cfg.rollout, cfg.model, tiny_dir)
    try:
        untrained = _policy_preds(cfg, tiny_dir, eval_files, engine)
        switched = switch_engine(engine, tiny_dir, tool_model_dir, cfg.rollout, cfg.model)
        assert switched is engine  # no new engine
        assert _policy_preds(cfg, tool_model_dir, eval_files, switched) == fresh != untrained
        assert [p["answer"] for p in fresh] == ["red", "blue", "red", "blue"]
    finally:
        engine.close()


def test_a_checkpoint_that_differs_beyond_its_weights_gets_a_new_engine(tool_model_dir, tmp_path, caplog):
    import shutil

    from awares_rl.checkpoint import save_model_dir
    from awares_rl.config import load_recipe
    from awares_rl.models import load_policy
    from awares_rl.rollout import make_engine, same_serving, switch_engine

    # a checkpoint loaded and saved again, as SFT and GRPO save theirs (sub-config dtypes and the
    # tokenizer's loader fields are written anew): the same serving
    resaved = tmp_path / "resaved"
    save_model_dir(resaved, load_policy(str(tool_model_dir)), load_processor(tool_model_dir))
    assert (resaved / "tokenizer_config.json").read_text() != (tool_model_dir / "tokenizer_config.json").read_text()
    assert same_serving(tool_model_dir, resaved)
    more_tokens = shutil.copytree(tool_model_dir, tmp_path / "more_tokens")
    processor = load_processor(more_tokens)
    processor.tokenizer.add_tokens(["zebra"])
    processor.save_pretrained(more_tokens)
    assert not same_serving(tool_model_dir, more_tokens)
    other = shutil.copytree(tool_model_dir, tmp_path / "other")
    assert same_serving(tool_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["_name_or_path"] = config["text_config"]["_name_or_path"] = "/elsewhere"  # where it came from: no matter
    (other / "config.json").write_text(json.dumps(config))
    assert same_serving(tool_model_dir, other)
    config["text_config"]["rms_norm_eps"] *= 10
    (other / "config.json").write_text(json.dumps(config))
    assert not same_serving(tool_model_dir, other)
    cfg = load_recipe(REPO / "recipes/tiny_cpu.yaml", ["rollout.backend=hf"])
    engine = make_engine(cfg.rollout, cfg.model, tool_model_dir)
    with caplog.at_level("INFO", logger="awares_rl.rollout"):
        new = switch_engine(engine, tool_model_dir, other, cfg.rollout, cfg.model)
    assert new is not engine and engine.model is None and "a new engine" in caplog.text
    new.close()
