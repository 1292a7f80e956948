"""The AwaRes discrete crop set (9 crops, one scale), the low-res view and the RTR cost.

Crop geometry follows the paper's evaluation code: crop width ``max(100, W // 2)``, height
``max(100, H // 2)``; 0-3 the corner quadrants, 4 the centre, 5/6 the top/bottom halves (full
width), 7/8 the left/right halves (full height). An image under 100 px on a side yields the whole
image for every crop.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), pixels, right/bottom exclusive

CROP_NAMES: tuple[str, ...] = (
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "center",
    "top",
    "bottom",
    "left",
    "right",
)
NUM_CROPS = len(CROP_NAMES)
MIN_CROP_SIDE = 100


def crop_box(width: int, height: int, crop_id: int) -> Box:
    """Pixel box of crop ``crop_id`` (0..8) in a ``width`` x ``height`` image."""
    if not 0 <= crop_id < NUM_CROPS:
        raise ValueError(f"crop id {crop_id} is out of range: valid ids are 0..{NUM_CROPS - 1}")
    if width < MIN_CROP_SIDE or height < MIN_CROP_SIDE:
        return (0, 0, width, height)
    w, h = min(width, max(MIN_CROP_SIDE, width // 2)), min(height, max(MIN_CROP_SIDE, height // 2))
    return (
        (0, 0, w, h),
        (width - w, 0, width, h),
        (0, height - h, w, height),
        (width - w, height - h, width, height),
        ((width - w) // 2, (height - h) // 2, (width + w) // 2, (height + h) // 2),
        (0, 0, width, h),
        (0, height - h, width, height),
        (0, 0, w, height),
        (width - w, 0, width, height),
    )[crop_id]


def crop_boxes(width: int, height: int, crop_ids: Sequence[int]) -> list[Box]:
    """Pixel boxes of several crops, in the order given."""
    return [crop_box(width, height, c) for c in crop_ids]


def cut_crops(image: Image.Image, crop_ids: Sequence[int]) -> list[Image.Image]:
    """Cut the requested crops from the ORIGINAL (full-resolution) image."""
    return [image.crop(b) for b in crop_boxes(image.width, image.height, crop_ids)]


LOW_RES_SCALE = 0.5  # the paper's low-res view: both sides x 0.5 (rollout.low_res_scale sets a run's)


def low_res_size(width: int, height: int, scale: float = LOW_RES_SCALE) -> tuple[int, int]:
    """Size of the low-res view: both sides scaled by ``scale`` (at least 1 px)."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"low-res scale must be in (0, 1], got {scale}")
    return max(1, round(width * scale)), max(1, round(height * scale))


def low_res_view(image: Image.Image, scale: float = LOW_RES_SCALE) -> Image.Image:
    """The cheap global view the model sees first (bicubic downscale of both sides)."""
    size = low_res_size(image.width, image.height, scale)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def boxes_to_crops(
    width: int, height: int, boxes: Sequence[Sequence[float]], rule: str = "smallest-cover"
) -> list[int]:
    """Map evidence boxes to crop ids (sorted, unique).

    Rules (the paper does not publish its rule; ``smallest-cover`` is our documented default):
      - ``smallest-cover``: per box, the smallest crop that fully contains it (ties: lowest id);
        a box no single crop covers falls back to its highest-IoU crop.
      - ``max-iou``: per box, the crop of highest IoU (ties: lowest id).
    """
    if rule not in ("smallest-cover", "max-iou"):
        raise ValueError(f"unknown box-to-crop rule {rule!r}: use 'smallest-cover' or 'max-iou'")
    all_boxes = crop_boxes(width, height, range(NUM_CROPS))
    chosen: set[int] = set()
    for box in boxes:
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"evidence box {list(box)} is not a valid [x1, y1, x2, y2] box")
        covering = [c for c, cb in enumerate(all_boxes) if _intersection(box, cb) >= _area(box) - 1e-6]
        if rule == "smallest-cover" and covering:
            chosen.add(min(covering, key=lambda c: (_area(all_boxes[c]), c)))
        else:
            chosen.add(max(range(NUM_CROPS), key=lambda c: (iou(box, all_boxes[c]), -c)))
    return sorted(chosen)


def retained_token_ratio(
    width: int, height: int, crop_ids: Sequence[int], low_res: tuple[int, int] | None = None
) -> float:
    """The paper's RTR: no crop -> low-res pixels / full pixels (0.25 at scale 0.5); with crops,
    the sum over crops of (crop pixels + low-res pixels) / full pixels (one quadrant -> 0.5)."""
    lw, lh = low_res or low_res_size(width, height)
    full, low = width * height, lw * lh
    if not crop_ids:
        return low / full
    return sum(_area(b) + low for b in crop_boxes(width, height, crop_ids)) / full
