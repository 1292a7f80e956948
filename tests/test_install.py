"""The CUDA stack (constraints-gpu.txt) and OpenRLHF's environment (constraints-openrlhf.txt)
resolve on PyPI: ``pip install --dry-run`` against PyPI alone, nothing installed.

pip runs ``--isolated`` (this machine's find-links, extra indexes and global constraints hold CPU
builds and are ignored) with ``fast-deps`` (wheel metadata by HTTP range requests: the CUDA wheels
are GBs). flash-attn is left out of both resolutions: PyPI has only its sdist, whose metadata
build imports torch and CUDA; its own requirements are torch and einops. Skipped, saying so,
where PyPI cannot be reached. ~2-3 min each on a fast network; the two run at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple/"
pytestmark = [pytest.mark.network, pytest.mark.slow]
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml here needs Python 3.11+")


def pypi_reachable() -> str | None:
    """None when PyPI answers, else why not."""
    try:
        urllib.request.urlopen(PYPI + "pip/", timeout=15).close()
        return None
    except OSError as e:
        return f"PyPI ({PYPI}) unreachable: {e}"


@pytest.fixture(scope="module", autouse=True)
def need_pypi():
    why = pypi_reachable()
    if why:
        pytest.skip(f"{why}; the GPU/OpenRLHF resolution checks need the index")


def dry_run(tmp: Path, constraints: str, reqs: list[str], *extra: str) -> dict[str, str]:
    """{name: version} pip would install for ``reqs`` under ``constraints``; fails naming pip's error."""
    (tmp / "reqs.txt").write_text("\n".join(reqs) + "\n")
    cert = ["--cert", os.environ["PIP_CERT"]] if os.environ.get("PIP_CERT") else []
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", *cert, "--dry-run", "--ignore-installed",
           "--use-feature=fast-deps", "--quiet", "--report", str(tmp / "r.json"), "--index-url", PYPI,
           "-c", str(ROOT / constraints), "-r", str(tmp / "reqs.txt"), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{constraints} does not resolve:\n{out.stderr[-3000:]}"
    report = json.loads((tmp / "r.json").read_text())
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}


def without_flash_attn(reqs: list[str]) -> list[str]:
    return [r for r in reqs if not r.replace("_", "-").lower().startswith("flash-attn")]


def gpu_stack(tmp: Path) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = without_flash_attn(project["dependencies"] + project["optional-dependencies"]["gpu"])
    return dry_run(tmp, "constraints-gpu.txt", reqs)


def openrlhf_environment(tmp: Path) -> dict[str, str]:
    meta = dry_run(tmp, "constraints-openrlhf.txt", ["openrlhf==0.11.2"], "--no-deps")
    assert meta == {"openrlhf": "0.11.2"}
    report = json.loads((tmp / "r.json").read_text())
    needs = [r for r in report["install"][0]["metadata"]["requires_dist"] if "extra ==" not in r]
    return dry_run(tmp, "constraints-openrlhf.txt", without_flash_attn(needs) + ["vllm==0.31.0"])


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Both resolutions at once (pip waits on the network most of the time): {name: Future}."""
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {"gpu": gpu_stack, "openrlhf": openrlhf_environment}
    yield {name: pool.submit(job, tmp_path_factory.mktemp(name)) for name, job in jobs.items()}
    pool.shutdown(wait=True, cancel_futures=True)


def test_gpu_stack_resolves(resolved):
    got = resolved["gpu"].result(timeout=1800)
    want = {"torch": "2.13.0", "torchvision": "0.28.0", "transformers": "5.19.0", "vllm": "0.32.0",
            "ray": "2.60.0", "deepspeed": "0.19.8"}
    assert {k: got.get(k) for k in want} == want  # the CUDA torch: no "+cpu" local version


def test_openrlhf_environment_resolves(resolved):
    got = resolved["openrlhf"].result(timeout=1800)
    want = {"torch": "2.13.0", "transformers": "5.15.0", "vllm": "0.31.0", "ray": "2.55.0", "deepspeed": "0.19.6"}
    assert {k: got.get(k) for k in want} == want
