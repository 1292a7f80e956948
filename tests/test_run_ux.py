"""What `awares-rl run` shows: a banner per stage, a line for a stage already done, and the
libraries' log lines in the run's logs/<stage>.log instead of the terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from awares_rl.cli import main
from awares_rl.commands.console import VLLM_CONFIG_ENV, setup_logging, stage_logs
from awares_rl.commands.run import run_stage
from awares_rl.config import load_recipe
from awares_rl.core.run_paths import RunPaths
from cluster.actor_group import VERBOSE_ENV

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_cpu.yaml"
# A whole run in a few minutes: 8 training samples, 2 steps of each training stage, 1 GRPO step.
TINY_RUN = [
    "data.n_train=8", "data.n_val=4", "data.n_test=4", "pretrain.steps=2", "pretrain.batch_size=4",
    "pretrain.probe_every=0", "pretrain.eval_samples=0", "sft.steps=2", "sft.batch_size=4", "sft.val_every=0",
    "sft.save_every=0", "sft.warmup_steps=0", "grpo.steps=1", "grpo.prompts_per_step=2", "rollout.group_size=2",
    "grpo.log_tables_every=1", "eval.n=4",
]  # fmt: skip


@pytest.fixture
def cli_logging(monkeypatch):
    """The CLI's logging for one test; the root's handlers and the library loggers restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    libs = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in ("vllm", "ray")}
    for var in (VERBOSE_ENV, VLLM_CONFIG_ENV, "WANDB_SILENT", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)  # setup_logging sets some: monkeypatch undoes it
    yield
    logging.captureWarnings(False)
    root.handlers[:], root.level = saved
    for name, (handlers, propagate) in libs.items():
        logging.getLogger(name).handlers[:], logging.getLogger(name).propagate = handlers, propagate


def test_library_lines_go_to_the_stage_log_only(tmp_path, capfd, cli_logging):
    setup_logging(verbose=False)
    assert os.environ["WANDB_SILENT"] == "true" and VERBOSE_ENV not in os.environ
    vllm = logging.getLogger("vllm")  # as vLLM sets itself up on import: its own stdout handler
    vllm.addHandler(logging.StreamHandler(sys.stdout))
    vllm.propagate = False
    paths = RunPaths(tmp_path / "run")
    with stage_logs(paths, "eval") as log_file:
        vllm.info("vllm says hello")
        logging.getLogger("awares_rl.evaluate").info("our own line")
        logging.getLogger("filelock").info("a propagating library line")
        # an engine process: vLLM applies the config file named in the environment on import
        child = (f"import json, logging.config, os; logging.config.dictConfig(json.load(open(os.environ[{VLLM_CONFIG_ENV!r}])));"
                 "logging.getLogger('vllm.v1.engine').info('engine core says hello')")
        subprocess.run([sys.executable, "-c", child], check=True)
    assert log_file == paths.log_file("eval") == tmp_path / "run" / "logs" / "eval.log"
    logged = log_file.read_text()
    for line in ("vllm says hello", "our own line", "a propagating library line", "engine core says hello"):
        assert line in logged
    shown = capfd.readouterr()
    assert "our own line" in shown.err
    assert "hello" not in shown.out + shown.err and "propagating" not in shown.err
    assert VLLM_CONFIG_ENV not in os.environ  # the config file was the stage's only


def test_verbose_keeps_the_libraries_on_the_terminal(tmp_path, capfd, cli_logging):
    setup_logging(verbose=True)
    assert os.environ[VERBOSE_ENV] == "1"
    with stage_logs(RunPaths(tmp_path), "sft") as log_file:
        logging.getLogger("filelock").info("a library line")
    assert "a library line" in capfd.readouterr().err and "a library line" in log_file.read_text()


def test_banner_then_skip_line(tmp_path, capsys, cli_logging):
    cfg = load_recipe(RECIPE, [f"run.out_dir={tmp_path}", "run.name=r"])
    sft = RunPaths(cfg.run.dir).model("sft")
    assert run_stage(cfg, "sft", lambda: 7) == 7
    shown = capsys.readouterr().out
    assert "SFT" in shown and "cold-start SFT" in shown and str(sft) in shown
    assert str(RunPaths(cfg.run.dir).log_file("sft")) in shown and "skipped" not in shown
    sft.mkdir(parents=True)
    (sft / "config.json").write_text("{}")
    run_stage(cfg, "sft", lambda: None)
    assert capsys.readouterr().out.strip() == f"SFT: done ({sft}), skipped"


@pytest.mark.slow
def test_tiny_run_twice(tmp_path, capfd, cli_logging, wandb_sandbox):
    """The whole pipeline on the CLI, vLLM engines and Ray actors included: banners, the stage logs
    with vLLM's and Ray's lines, the terminal without them; run again, every stage but eval is skipped."""
    argv = ["run", str(RECIPE), f"run.out_dir={tmp_path}", "run.name=r", *TINY_RUN]
    assert main(argv) == 0
    first = capfd.readouterr()
    paths = RunPaths(tmp_path / "r")
    for title in ("Data", "Base model", "Trajectories", "SFT", "GRPO", "Eval"):
        assert title in first.out
    assert "AwaRes on the embedded default" in first.out
    for mode in ("low", "full", "grounding"):
        assert f"eval base: {mode}: 100%" in first.err
    assert "eval sft: policy: 100%" in first.err and "eval grpo: policy: 100%" in first.err
    assert "INFO vllm" in paths.log_file("trajectories").read_text()  # the engine core's lines
    assert "Started a local Ray instance" in paths.log_file("sft").read_text()
    assert "INFO vllm" not in first.out + first.err and "Ray instance" not in first.out + first.err
    assert paths.ray_logs("grpo").is_symlink() and any(paths.ray_logs("grpo").glob("worker-*.out"))
    assert paths.episode_grid("grpo").is_file()
    assert json.loads(paths.results.read_text())["grpo"]["accuracy"] >= 0

    assert main(argv) == 0
    again = capfd.readouterr().out
    for title, out in (("Data", paths.data), ("SFT", paths.model("sft")), ("GRPO", paths.model("grpo"))):
        assert f"{title}: done ({out}), skipped" in again
    assert "Eval" in again and "skipped" not in again.split("Eval")[-1]
