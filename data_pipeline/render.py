"""Drawing primitives of the synthetic benchmark: textures, shape marks, dots and digits.

Each function draws one detail into an RGB ``numpy`` canvas (H, W, 3, uint8) in place and returns
the detail's pixel box ``(x1, y1, x2, y2)`` (right/bottom exclusive) — the evidence box.

Why 1-px textures vanish at low res: the 0.5 bicubic downscale of an even-sized image centres each
output pixel on the boundary between source pixels 2i and 2i+1, so its symmetric kernel weights
every (even, odd) pixel pair equally; a pattern of period 2 (1-px stripes, 1-px checker) therefore
averages to its flat mean. Cells of 7 px have period 14 and survive (period 7 at low res).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (236, 200, 20),
    "purple": (148, 70, 190),
    "cyan": (23, 190, 207),
}
# Colours of the marks in "colour" questions: far from the panel palette, its dark (x0.3) and
# mid (x0.65) versions and the light-grey background, so a visual token of a mark says the answer
# by its colour alone (white, black and dark hues were confusable and did not learn).
MARK_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (255, 140, 0),
    "pink": (255, 160, 205),
    "grey": (128, 128, 128),
    "lime": (170, 240, 80),
    "brown": (140, 80, 20),
}
INK = (20, 20, 20)  # the colour of shape marks, dots and digits
DARK = 0.3  # the dark half of a texture is its colour times DARK: every pixel keeps the hue,
#             so each visual token of a swatch says which panel it belongs to
PATTERNS = ("horizontal", "vertical", "checker")
SHAPES = ("circle", "square", "triangle", "cross")


def pattern_mask(kind: str, height: int, width: int, cell: int, phase: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of a texture: stripes across rows/columns or a checkerboard of ``cell`` px."""
    ys = (np.arange(height)[:, None] + phase[0]) // cell
    xs = (np.arange(width)[None, :] + phase[1]) // cell
    if kind == "horizontal":
        mask = ys % 2 + 0 * xs
    elif kind == "vertical":
        mask = xs % 2 + 0 * ys
    elif kind == "checker":
        mask = (ys + xs) % 2
    else:
        raise ValueError(f"unknown pattern {kind!r}: use one of {PATTERNS}")
    return mask.astype(bool)


def taper(height: int, width: int, margin: int) -> np.ndarray:
    """(H, W) amplitude in [0, 1]: 1 inside, ramping to ~0 over ``margin`` px at the border."""
    if margin <= 0:
        return np.ones((height, width))
    dy = np.minimum(np.arange(height), np.arange(height)[::-1]) + 1
    dx = np.minimum(np.arange(width), np.arange(width)[::-1]) + 1
    d = np.minimum(dy[:, None], dx[None, :])
    return np.clip(d / (margin + 1), 0.0, 1.0)


def draw_pattern(
    canvas: np.ndarray,
    box: Box,
    kind: str,
    colour: tuple[int, int, int],
    cell: int,
    phase: tuple[int, int],
    edge_taper: int = 0,
    dark: float = DARK,
) -> Box:
    """Fill ``box`` with a ``colour`` / ``dark`` x ``colour`` texture; with ``edge_taper`` the contrast fades to the
    texture's mean near the border (so the low-res border carries no orientation)."""
    x1, y1, x2, y2 = box
    mask = pattern_mask(kind, y2 - y1, x2 - x1, cell, phase)[..., None]
    hi = np.asarray(colour, float)
    lo = hi * dark
    tex = np.where(mask, hi, lo)
    amp = taper(y2 - y1, x2 - x1, edge_taper)[..., None]
    mean = (hi + lo) / 2
    canvas[y1:y2, x1:x2] = np.rint(mean + amp * (tex - mean)).astype(np.uint8)
    return box


def draw_echo(canvas: np.ndarray, box: Box, kind: str, cell: int, phase: tuple[int, int],
              strength: float, edge_taper: int = 0) -> Box:
    """Modulate the brightness of ``box`` by ``1 +/- strength`` along a ``kind`` texture of
    ``cell`` px (over whatever is drawn there); faded at the border like ``draw_pattern``."""
    x1, y1, x2, y2 = box
    mask = pattern_mask(kind, y2 - y1, x2 - x1, cell, phase)[..., None]
    amp = strength * taper(y2 - y1, x2 - x1, edge_taper)[..., None]
    region = canvas[y1:y2, x1:x2].astype(float)
    canvas[y1:y2, x1:x2] = np.clip(np.rint(region * np.where(mask, 1 + amp, 1 - amp)), 0, 255).astype(np.uint8)
    return box


def _draw_on(canvas: np.ndarray, box: Box, paint) -> Box:
    """Run ``paint(ImageDraw, w, h)`` on the region ``box``; return the box of changed pixels."""
    x1, y1, x2, y2 = box
    before = canvas[y1:y2, x1:x2].copy()
    img = Image.fromarray(before)
    paint(ImageDraw.Draw(img), x2 - x1 - 1, y2 - y1 - 1)
    canvas[y1:y2, x1:x2] = np.asarray(img)
    ys, xs = np.nonzero(np.any(canvas[y1:y2, x1:x2] != before, axis=-1))
    if len(xs) == 0:
        return box
    return (x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1)


def _paint_shape(kind: str, fill: tuple[int, int, int]):
    def paint(draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
        if kind == "circle":
            draw.ellipse((0, 0, w, h), fill=fill)
        elif kind == "square":
            inset = round(w * 0.08)
            draw.rectangle((inset, inset, w - inset, h - inset), fill=fill)
        elif kind == "triangle":
            draw.polygon([(w / 2, 0), (w, h), (0, h)], fill=fill)
        elif kind == "cross":
            t = w / 3
            draw.rectangle((t, 0, w - t, h), fill=fill)
            draw.rectangle((0, t, w, h - t), fill=fill)
        else:
            raise ValueError(f"unknown shape {kind!r}: use one of {SHAPES}")

    return paint


def draw_shape(canvas: np.ndarray, box: Box, kind: str, fill: tuple[int, int, int] = INK) -> Box:
    """Draw a filled ``kind`` mark (circle, square, triangle, cross) inside ``box``."""
    return _draw_on(canvas, box, _paint_shape(kind, fill))


def draw_dot(canvas: np.ndarray, box: Box) -> Box:
    """A filled INK disc inscribed in ``box``."""
    return _draw_on(canvas, box, lambda d, w, h: d.ellipse((0, 0, w, h), fill=INK))


@functools.lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def digit_size(text: str, px: int) -> tuple[int, int]:
    """(width, height) in px of ``text`` drawn at glyph size ``px``."""
    left, top, right, bottom = _font(px).getbbox(text)
    return int(right - left), int(bottom - top)


def draw_digit(canvas: np.ndarray, origin: tuple[int, int], text: str, px: int) -> Box:
    """Draw ``text`` in INK with its ink box's top-left at ``origin``; return the ink box."""
    font = _font(px)
    left, top, right, bottom = font.getbbox(text)
    x, y = origin
    region = (x, y, x + int(right - left) + 2, y + int(bottom - top) + 2)
    return _draw_on(canvas, region, lambda d, w, h: d.text((-left, -top), text, fill=INK, font=font))
