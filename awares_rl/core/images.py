"""Loading images safely: clear errors naming the file, and every PIL mode turned into RGB."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_ASPECT_RATIO = 200  # Qwen2.5-VL's smart_resize refuses more extreme images
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the fix."""


def stretch_to_l(image: Image.Image) -> Image.Image:
    """An ``I;16`` / ``I`` / ``F`` image as 8-bit greyscale, its value range scaled to 0..255
    (PIL's own convert clips such values, turning most 16-bit and float images black or white).
    Non-finite floats count as the minimum."""
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    lo, hi = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    values = np.where(finite, values, lo)
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.clip(values, 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL mode: alpha is composited on white, 16-bit, 32-bit and float
    greyscale have their value range scaled to 0..255."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return stretch_to_l(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_image(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Raise ImageError for an empty or extremely elongated image; return it otherwise."""
    w, h = image.size
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image is empty ({w}x{h})")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"{name}: aspect ratio {w}x{h} exceeds {MAX_ASPECT_RATIO}:1, which Qwen2.5-VL refuses; "
            "pad or split the image"
        )
    return image


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert an image to RGB; ImageError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found; check the 'image' field and the data root")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(
                        f"{path}: {im.width}x{im.height} = {im.width * im.height} pixels exceeds "
                        f"max_pixels={max_pixels}; downscale it or raise data.max_image_pixels"
                    )
                im = ImageOps.exif_transpose(im)
                im.load()
                image = to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: decompression bomb refused ({e}); downscale the image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return check_image(image, str(path))
