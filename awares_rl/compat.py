"""Make PyPI's CUDA-linked torchvision importable beside the CPU torch 2.13.0 build.

torchvision's native ops (``torchvision._C``) fail to load next to a CPU torch, and its module-level
``register_fake("torchvision::nms")`` / ``("torchvision::qnms")`` then raise "operator
torchvision::nms does not exist", so ``import torchvision`` dies, and with it transformers'
Qwen2.5-VL processor and vLLM's model inspection. Defining the two op schemas before torchvision
loads lets the import succeed; transforms work, detection ops (nms, roi_align: not used here) raise
when called. Imported by ``awares_rl/__init__`` and, through a .pth file that scripts/setup_venv.sh
writes, by every interpreter of the venv (vLLM's engine process, Ray workers).
"""

from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libs: list = []  # keep the Library objects alive: dropping them unregisters the schemas


def patch_torchvision() -> bool:
    """Register torchvision's missing op schemas if needed; True when a patch was applied."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torch") is None:
        return False
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False  # a working torchvision (or an earlier patch) already defined the ops
    except RuntimeError:
        pass
    if importlib.util.find_spec("torchvision") is None:
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        lib.define(schema)
    _libs.append(lib)
    return True


patch_torchvision()


def check() -> None:
    """Fail loudly unless torchvision, transformers' image processors and vLLM import."""
    import torchvision  # noqa: F401
    from transformers import Qwen2VLImageProcessor  # noqa: F401

    print(f"torchvision {torchvision.__version__} imports")
    if importlib.util.find_spec("vllm") is not None:
        import vllm  # noqa: F401

        print(f"vllm {vllm.__version__} imports")

