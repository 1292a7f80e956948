"""awares-rl: train vision-language models to answer from a low-res view and crop when needed."""

from awares_rl.compat import patch_torchvision

TORCHVISION_PATCHED = patch_torchvision()  # before torchvision is imported (awares_rl/compat.py)

__version__ = "0.1.0"
