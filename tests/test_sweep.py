"""Reward sweeps: the search space validates (bad keys fail naming the key), the Pareto front and
the recommendation on hand-made points, and a real sweep on Ray Tune with the tiny model: two
trials of two GRPO steps (two more fail at start and do not stop them), its table, plot, front and
W&B run, and a second run that reads the finished trials back instead of re-running them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import ray

from awares_rl.commands.stages import run_sweep_recipe
from awares_rl.config import load_recipe
from awares_rl.core.config_io import ConfigError
from awares_rl.sweep.config import SweepConfig, grid_points, search_space
from awares_rl.sweep.pareto import dominates, pareto_front, recommend
from awares_rl.sweep.run import check_grid
from awares_rl.sweep.trial import apply_params, trial_key, trial_label
from awares_rl.wandb_offline import read_offline_run

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"  # absolute: wandb_sandbox moves the CWD


@pytest.mark.parametrize("space, message", [
    ("{reward.lamb: [0.1]}", "'reward.lamb': reward has no key 'lamb'"),
    ("{rewards.lam: [0.1]}", "'rewards.lam' is not section.key"),
    ("{lam: [0.1]}", "'lam' is not section.key"),
    ("{run.seed: [1, 2]}", "'run.seed' is not section.key"),
    ("{reward.judge: [1]}", "'reward.judge' is not a number field"),
    ("{reward.lam: []}", "sweep.space.reward.lam: the list of values is empty"),
    ("{reward.lam: [0.1, .nan]}", "sweep.space.reward.lam: nan is not a finite number"),
    ("{reward.lam: [true]}", "sweep.space.reward.lam: True is not a finite number"),
    ("{reward.lam: {low: 0.1, high: 0.3}}", "sweep.space.reward.lam: a grid needs a list of values"),
    ("{reward.lam: 0.1}", "sweep.space.reward.lam: expected a list of values"),
    ("{}", "sweep.space is empty"),
])
def test_bad_space_fails_naming_the_key(space, message):
    with pytest.raises(ConfigError, match="sweep") as e:
        load_recipe(RECIPE, ["sweep.search=grid", f"sweep.space={space}"])
    assert message in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("sweep.space={reward.lam: {low: 0.3, high: 0.1}}", "needs low < high"),
    ("sweep.space={reward.lam: {low: 0, high: 1, log: true}}", "low > 0 with log: true"),
    ("sweep.space={reward.lam: {low: 0, hi: 1}}", "a range is {low: L, high: H, log: false}"),
    ("sweep.overrides=[run.name=x]", "outside the run and sweep sections"),
    ("sweep.overrides=[grpo.lr]", "must be key=value"),
    ("sweep.num_trials=0", "sweep.num_trials must be >= 1"),
    ("sweep.name=../x", "must be a plain folder name"),
])
def test_bad_random_space_and_settings(override, message):
    with pytest.raises(ConfigError, match="sweep") as e:
        load_recipe(RECIPE, ["sweep.search=random", override])
    assert message in str(e.value)


def test_grid_space_points_and_validation():
    cfg = load_recipe(RECIPE, ["sweep.search=grid", "sweep.space={reward.lam: [0.0, 0.2], reward.alpha_use: [0.05, 0.1, 0.2]}"])
    dims = search_space(cfg.sweep)
    assert cfg.sweep.trials == 6 and grid_points(dims)[1] == {"reward.lam": 0.0, "reward.alpha_use": 0.1}
    check_grid(cfg, dims)  # every point keeps alpha_miss (0.5) > alpha_use + lam
    with pytest.raises(ConfigError, match="num_trials=4 but the grid has 6 points"):
        load_recipe(RECIPE, ["sweep.search=grid", "sweep.num_trials=4",
                             "sweep.space={reward.lam: [0.0, 0.2], reward.alpha_use: [0.05, 0.1, 0.2]}"])
    bad = load_recipe(RECIPE, ["sweep.search=grid", "sweep.space={reward.lam: [0.0, 0.5]}"])
    with pytest.raises(ConfigError, match=r"grid point \{'reward.lam': 0.5\} is not a valid recipe.*alpha_miss"):
        check_grid(bad, search_space(bad.sweep))
    default = SweepConfig()  # random search over the paper's three weights, 6 draws
    assert (default.search, default.trials, sorted(default.space)) == (
        "random", 6, ["reward.alpha_miss", "reward.alpha_use", "reward.lam"])
    assert load_recipe(RECIPE).sweep.trials == 6  # the tiny recipe's grid: 3 lam x 2 alpha_use


def test_trial_params_key_and_label():
    cfg = load_recipe(RECIPE)
    out = apply_params(cfg, {"reward.lam": 0.2, "grpo.mini_batches": 4})
    assert (out.reward.lam, out.grpo.mini_batches, out.reward.alpha_use) == (0.2, 4, cfg.reward.alpha_use)
    a, b = {"reward.lam": 0.123456, "reward.alpha_use": 0.1}, {"reward.alpha_use": 0.1, "reward.lam": 0.12346}
    assert trial_key(a) == trial_key(b) != trial_key({"reward.lam": 0.2})  # rounded, order-free
    assert trial_label(a) == "α_use=0.1 λ=0.1235"


def test_pareto_front_on_hand_made_points():
    pts = [(90.0, 0.25), (95.0, 0.30), (93.0, 0.31), (95.0, 0.30), (97.0, 0.40), (89.0, 0.26), (97.0, 0.35)]
    assert dominates((95.0, 0.30), (93.0, 0.31)) and not dominates((95.0, 0.30), (95.0, 0.30))
    # (93, .31) loses to (95, .30); (89, .26) to (90, .25); (97, .40) to (97, .35); ties both stay
    assert pareto_front(pts) == [0, 1, 3, 6]
    assert pareto_front([]) == []
    assert recommend(pts, max_rtr=0.3) == 1  # 95 % within RTR 0.30 (first of the tie)
    assert recommend(pts, max_rtr=0.2) is None
    assert recommend(pts, min_accuracy=96) == 6  # the cheaper of the two 97 % points
    assert recommend(pts, min_accuracy=90) == 0
    with pytest.raises(ValueError, match="exactly one target"):
        recommend(pts)


def _run_dir_with_sft(tmp_path: Path, model: Path) -> Path:
    run = tmp_path / "s"
    for stage in ("base", "sft"):  # the tool model stands in for the run's base and SFT models
        shutil.copytree(model, run / "models" / stage)
    return run


@pytest.mark.slow
def test_sweep_runs_on_ray_tune_and_resumes(tmp_path, tool_model_dir, wandb_sandbox):
    run = _run_dir_with_sft(tmp_path, tool_model_dir)
    overrides = [
        f"run.out_dir={tmp_path}", "run.name=s", "data.n_train=8", "data.n_val=4", "rollout.group_size=4",
        "rollout.max_new_tokens=16", "rollout.backend=hf", "grpo.prompts_per_step=2", "grpo.save_every=0", "grpo.kl_coef=0",
        "eval.max_new_tokens=16", "learner.backend=torch", "logging.wandb=true", "logging.wandb_mode=offline",
        # mini_batches 64 > the 8 episodes of a step: those two trials fail at start, the others go on
        "sweep.search=grid", "sweep.space={reward.lam: [0.0, 0.3], grpo.mini_batches: [1, 64]}",
        "sweep.grpo_steps=2", "sweep.overrides=[grpo.lr=1e-3]",
    ]
    try:
        report = run_sweep_recipe(str(RECIPE), overrides, max_rtr=1.0)
    finally:
        ray.shutdown()
    out = run / "sweeps" / "reward"
    rows = {r["label"]: r for r in report["trials"]}
    assert sorted(rows) == ["mini_batches=1 λ=0", "mini_batches=1 λ=0.3", "mini_batches=64 λ=0", "mini_batches=64 λ=0.3"]
    for label, r in rows.items():
        if "64" in label:
            assert r["status"] == "error" and "grpo.mini_batches=64" in r["error"]
        else:
            assert r["status"] == "ok" and r["n"] == 4 and 0 <= r["accuracy"] <= 100 and 0.0 < r["rtr"] <= 1.0
            metrics = (out / "trials" / r["trial"] / "grpo" / "metrics.jsonl").read_text().splitlines()
            assert len(metrics) == 2  # two GRPO steps from the SFT model
            assert json.loads(metrics[0])["learner/lr"] == pytest.approx(1e-3)  # sweep.overrides applied
    ok = [r for r in report["trials"] if r["status"] == "ok"]
    assert set(report["front"]) <= {r["trial"] for r in ok} and report["front"]
    assert report["recommended"]["trial"] in report["front"]
    assert set(report["references"]) == {"low-res only", "full-res only", "SFT (start)"}
    assert report["references"]["low-res only"]["rtr"] == pytest.approx(0.25, abs=0.02)
    with (out / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {t["status"] for t in table} == {"ok", "error"}
    assert (out / "pareto.png").stat().st_size > 10_000 and json.loads((out / "pareto.json").read_text())["front"]
    logged = [r for r in read_offline_run(out / "wandb") if "sweep" in r]  # not the trials' GRPO runs
    assert logged[0]["sweep"]["nrows"] == 4 and "pareto_png" in logged[0]

    mtimes = {r["trial"]: (out / "trials" / r["trial"] / "results.json").stat().st_mtime for r in ok}
    try:  # resume: the finished trials are read back, not trained again
        again = run_sweep_recipe(str(RECIPE), overrides)
    finally:
        ray.shutdown()
    status = {r["label"]: r["status"] for r in again["trials"]}
    assert status == {"mini_batches=1 λ=0": "cached", "mini_batches=1 λ=0.3": "cached",
                      "mini_batches=64 λ=0": "error", "mini_batches=64 λ=0.3": "error"}
    assert all((out / "trials" / t / "results.json").stat().st_mtime == m for t, m in mtimes.items())


def test_a_trial_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    from dataclasses import replace

    from awares_rl.sweep.trial import restart_unsaved

    cfg = load_recipe(RECIPE)
    cfg = replace(cfg, run=replace(cfg.run, out_dir=str(tmp_path), name="t1"))
    grpo = cfg.run.dir / "grpo"
    grpo.mkdir(parents=True)
    restart_unsaved(cfg)  # nothing logged yet: nothing to do
    assert grpo.is_dir()
    (grpo / "metrics.jsonl").write_text('{"step": 1}\n')  # killed at step 1, no checkpoint
    restart_unsaved(cfg)
    assert not grpo.exists()
