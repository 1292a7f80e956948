"""awares-rl: train vision-language models to answer from a low-res view and crop when needed."""

from awares_rl import compat as _compat  # noqa: F401  (must run before torchvision is imported)

__version__ = "0.1.0"
