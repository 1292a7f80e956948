"""scripts/gpu_check.sh runs end to end with ``--device cpu`` (small): the report it writes and
its exit status, so the script is known to work before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)


def test_cpu_run_writes_a_passing_report(tmp_path):
    out = run_check(tmp_path, "--device", "cpu", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "8",
                    "--out", "r/report.json")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["device"], report["dtype"], report["attn_implementation"]) == ("cpu", "float32", "sdpa")
    assert report["ok"] and all(report["checks"].values())
    assert report["engine"]["episodes"] == 4 and report["engine"]["tokens_per_s"] > 0
    assert report["learner_step"]["sequences"] == 4 and report["learner_step"]["tokens_per_s"] > 0
    assert 0 < report["logprobs"]["compared_tokens"] <= 4 * 2 * 8  # at most 2 turns of 8 tokens each
    assert report["logprobs"]["max_abs"] <= report["tolerance"]["max_abs"]
    assert report["peak_memory_gib"] > 0 and report["env"]["torch"] == __import__("torch").__version__


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_cuda_without_a_gpu_says_so(tmp_path):
    out = run_check(tmp_path, "--device", "cuda")
    assert out.returncode == 2 and "sees no CUDA GPU" in out.stderr and "--device cpu" in out.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_bad_sizes_are_refused(tmp_path):
    out = run_check(tmp_path, "--device", "cpu", "--prompts", "0")
    assert out.returncode == 2 and "--prompts, --group-size and --max-new-tokens must be >= 1" in out.stderr
