"""Make PyPI's CUDA-linked torchvision importable beside the CPU torch 2.13.0 build.

torchvision's native ops (``torchvision._C``) fail to load next to a CPU torch, and its module-level
``register_fake("torchvision::nms")`` / ``("torchvision::qnms")`` then raise "operator
torchvision::nms does not exist", so ``import torchvision`` dies, and with it transformers'
Qwen2.5-VL processor and vLLM's model inspection. Defining the two op schemas before torchvision
loads lets the import succeed; transforms work, detection ops (nms, roi_align: not used here) raise
when called. The patch applies only where torchvision's native library does not load (a CPU torch
beside a CUDA torchvision); where it loads (a matching CUDA pair on a GPU machine) nothing is
touched. Called by ``awares_rl/__init__`` on import and, through a .pth file that scripts/setup_venv.sh
writes, by every interpreter of the venv (vLLM's engine process, Ray workers).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libs: list = []  # keep the Library objects alive: dropping them unregisters the schemas


def native_ops_load() -> bool:
    """Whether torchvision's native library (``torchvision/_C*.so``) loads beside this torch; it
    registers the real ops when it does (torchvision would load it on import anyway)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    libs = [p for d in dirs for p in sorted(Path(d).glob("_C*.so"))]
    if not libs:
        return False
    try:
        torch.ops.load_library(str(libs[0]))
        return True
    except (OSError, RuntimeError):  # undefined symbols of a torch built for another device
        return False


def _nms_defined() -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def patch_torchvision(native_loads: Callable[[], bool] = native_ops_load) -> bool:
    """Register torchvision's op schemas if its native ops are missing; True when a patch was applied.

    Nothing is done when torchvision is already imported or not installed, when the ops already
    exist (a working torchvision, or an earlier patch), or when ``native_loads()`` says its native
    library loads here."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torch") is None:
        return False
    if importlib.util.find_spec("torchvision") is None or _nms_defined() or native_loads():
        return False
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _libs.append(lib)
    return True



def check() -> None:
    """Fail loudly unless torchvision, transformers' image processors and vLLM import."""
    import torchvision  # noqa: F401
    from transformers import Qwen2VLImageProcessor  # noqa: F401

    print(f"torchvision {torchvision.__version__} imports")
    if importlib.util.find_spec("vllm") is not None:
        import vllm  # noqa: F401

        print(f"vllm {vllm.__version__} imports")

