"""awares_rl.compat: torchvision's op schemas are defined only where its native ops do not load.

Each case runs in a fresh interpreter started with ``-S`` (no site: the venv's .pth that imports
awares_rl would patch first) and loads compat.py by path, so nothing is patched before the test
decides which branch to take."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

COMPAT = Path(__file__).resolve().parents[1] / "awares_rl" / "compat.py"

PRELUDE = f"""
import importlib.util, json, sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
spec = importlib.util.spec_from_file_location("compat_under_test", {str(COMPAT)!r})
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-S", "-c", PRELUDE + code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_native_ops_present_means_no_patch():
    got = run("p = c.patch_torchvision(lambda: True)\n"
              "print(json.dumps({'patched': p, 'defined': c._nms_defined()}))")
    assert got == {"patched": False, "defined": False}


def test_native_ops_missing_means_patch_and_torchvision_imports():
    got = run("p = c.patch_torchvision(lambda: False)\n"
              "d = c._nms_defined(); again = c.patch_torchvision(lambda: False)\n"
              "import torch, torchvision.transforms.functional as F\n"
              "img = F.resize(torch.zeros(3, 8, 8), [4, 4])\n"
              "print(json.dumps({'patched': p, 'defined': d, 'again': again, 'shape': list(img.shape)}))")
    assert got == {"patched": True, "defined": True, "again": False, "shape": [3, 4, 4]}


def test_default_decision_follows_whether_native_ops_load():
    """The real check on this machine: patched exactly when torchvision's _C does not load
    (a CPU torch beside PyPI's CUDA torchvision here; a matching pair on a GPU machine), and
    torchvision imports either way."""
    got = run("p = c.patch_torchvision()\n"
              "import torchvision\n"
              "print(json.dumps({'patched': p, 'native': c.native_ops_load()}))")
    assert got["patched"] is not got["native"]
