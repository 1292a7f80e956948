"""Configuration of the synthetic high-res benchmark (``SynthConfig``).

The embedded default is sized for the tiny CPU recipe (Qwen3-VL, 32 px a visual token): image
sides 448-640 px (low-res view 224-320 px, i.e. 49-100 visual tokens; full res 196-400), so that
pretraining the tiny model fits in minutes on 2 cores. GPU recipes raise ``max_side`` towards the
paper's ~1344 px (a multiple of ``side_step``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from awares_rl.core.config_io import require

# The detail families the generator knows. "pattern" has a small tier (1-px texture that a 0.5
# downscale averages to a flat tint), a medium tier (the same 1-px texture under a faint 2-px
# "echo" that survives the downscale but shows the answer's class only ``medium_echo_truth`` of
# the time, so the low-res view is right only sometimes and cannot tell when) and a large tier
# (7-px cells that survive it); "colour", "shape" and "count" are large-only; "digit" is the
# optional OCR-like tier (small digits).
FAMILIES = ("pattern", "colour", "shape", "count", "digit")
SMALL_TIER_FAMILIES = ("pattern", "digit")
MEDIUM_TIER_FAMILIES = ("pattern",)
TIERS = ("small", "medium", "large")
DISTRACTORS = ("other-family", "same-family", "none")


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic benchmark; every field is validated in ``__post_init__``."""

    min_side: int = 448  # smallest image side (px); a multiple of side_step
    max_side: int = 640  # largest image side (px); both sides drawn independently (aspect varies)
    # Sides are multiples of twice the model family's pixels per visual token (64 for Qwen3-VL's
    # 32 px, 56 for Qwen2.5-VL's 28: ``ModelFamily.side_step``), so that the full image, its 0.5
    # low-res view and every crop of the crop set are whole visual tokens: the processor then
    # never resamples them, and a 1-px texture reaches the vision tower intact at full resolution.
    side_step: int = 64
    small_detail_share: float = 0.08  # share of questions whose detail is too small for low res
    medium_detail_share: float = 0.10  # share whose low-res view is right only sometimes (pattern)
    # Tiers are dealt in blocks of ``tier_block`` consecutive sample indices: each block holds
    # exactly small_detail_share x tier_block small and medium_detail_share x tier_block medium
    # questions, in a seeded order. Every split of a multiple of tier_block samples then holds the
    # configured shares exactly, and fresh splits differ in their images, not in how many fine
    # details they ask about (drawn independently, a 200-sample split's fine share spread by
    # +-2.7 points, which moved an exact-crop policy's RTR by +-0.007; README, issue #10).
    # 0: each sample draws its tier independently. Sample i's tier never depends on the split size.
    tier_block: int = 50
    medium_echo_cell: int = 2  # cell (px) of the medium tier's echo: period 4, 2 in the 0.5 view
    medium_echo_strength: float = 0.3  # relative brightness swing of the echo (the 1-px texture: 0.7)
    medium_echo_truth: float = 0.6  # probability that the echo shows the answer's class
    # Relative weights of the question families. Only "pattern" is on by default: its details are
    # fixed per-patch templates that the tiny model reads in tens of steps. The others work but
    # learn far slower from scratch (measured: colour of a mark 54% after 200 steps alone, 29%
    # beside patterns; see data_pipeline/README.md), so they are opt-in harder tiers.
    pattern_weight: float = 1.0  # "What pattern is in the red panel?" (texture of a swatch)
    colour_weight: float = 0.0  # "What colour is the mark in the red panel?" (large mark)
    shape_weight: float = 0.0  # "What shape is in the red panel?" (shape of a large mark)
    count_weight: float = 0.0  # "How many dots are in the red panel?" (1-4 large dots)
    digit_weight: float = 0.0  # "What digit is in the red panel?" (OCR-like; small or large)
    panels: int = 4  # panels drawn, one per quadrant (1..4)
    # What the other panels hold: "other-family" (each other enabled family once, the rest plain:
    # no two panels answer the same question, so the question's family word alone picks the
    # panel), "same-family" (the model must bind the colour named in the question to a panel:
    # measured to plateau at 68% with 4 panels after 300 steps, see data_pipeline/README.md),
    # or "none" (plain panels).
    distractors: str = "other-family"
    panel_min_frac: float = 0.62  # panel side as a fraction of its quadrant side, lower bound
    panel_max_frac: float = 0.9  # ... upper bound (panels always lie inside one quadrant)
    swatch_inset_min: int = 8  # px of plain panel colour around a texture swatch, lower bound
    swatch_inset_max: int = 20  # ... upper bound (the swatch fills the rest of the panel, so the
    #                              detail covers many visual tokens: fast to learn)
    # Texture cell (px) of large-tier patterns; >= 2 survives a 0.5 downscale. 7 makes the period
    # 14 px: one ViT patch at full res, half a patch in the 0.5 view. Textures are anchored to the
    # image origin, so every patch sees the same phase: one fixed template per class, learnt in
    # tens of steps (random phases took hundreds).
    large_cell: int = 7
    # The dark half of a 1-px texture (small and medium tiers) as a fraction of its colour (large
    # textures: render.DARK = 0.3). Below 0.3 its low-res tint is darker than any large texture's
    # mean: the 0.5 view shows THAT a fine detail is there, not which one. At 0.3 (as large ones)
    # the tiny model read every fine tint as "vertical" and GRPO cropped large vertical
    # textures with them (README, issue #10).
    fine_dark: float = 0.0
    edge_taper: int = 3  # px over which a small texture fades to its mean at the swatch border,
    #                      so that the border of the low-res view leaks no orientation
    shape_min_frac: float = 0.45  # side of a shape mark as a fraction of its panel's short side
    shape_max_frac: float = 0.75  # ... upper bound
    dot_size: int = 22  # diameter of a dot in "count" questions (px)
    max_count: int = 4  # counts are drawn from 1..max_count
    digit_small_px: int = 9  # glyph height of a small digit (px); unreadable at 0.5
    digit_large_px: int = 44  # glyph height of a large digit (px)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"SynthConfig.{f.name} = {value} must be >= 0")
        self._check_sizes()
        self._check_weights()
        self._check_details()

    def _check_sizes(self) -> None:
        if self.side_step <= 0 or self.side_step % 8:
            raise ValueError(
                f"SynthConfig.side_step = {self.side_step} must be a positive multiple of 8; use "
                "twice the model's pixels per visual token (64 for Qwen3-VL, 56 for Qwen2.5-VL)"
            )
        for name in ("min_side", "max_side"):
            value = getattr(self, name)
            if value % self.side_step or value < 224:
                raise ValueError(
                    f"SynthConfig.{name} = {value} must be a multiple of side_step "
                    f"({self.side_step}) and >= 224; e.g. 448 or 640 (side_step 64)"
                )
        if self.min_side > self.max_side:
            raise ValueError(
                f"SynthConfig.min_side ({self.min_side}) > max_side ({self.max_side}): swap them"
            )
        if self.distractors not in DISTRACTORS:
            raise ValueError(
                f"SynthConfig.distractors = {self.distractors!r} must be one of {DISTRACTORS}"
            )
        if not 1 <= self.panels <= 4:
            raise ValueError(f"SynthConfig.panels = {self.panels} must be in 1..4 (one per quadrant)")
        if not 0.3 <= self.panel_min_frac <= self.panel_max_frac <= 0.95:
            raise ValueError(
                "SynthConfig.panel_min_frac / panel_max_frac must satisfy 0.3 <= min <= max <= "
                f"0.95 (panels must fit inside a quadrant); got {self.panel_min_frac}, "
                f"{self.panel_max_frac}"
            )

    def _check_weights(self) -> None:
        shares = (self.small_detail_share, self.medium_detail_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(
                f"SynthConfig.small_detail_share ({self.small_detail_share}) and "
                f"medium_detail_share ({self.medium_detail_share}) must be >= 0 and sum to <= 1"
            )
        for name in ("small_detail_share", "medium_detail_share"):
            per_block = getattr(self, name) * self.tier_block
            if abs(per_block - round(per_block)) > 1e-6:
                raise ValueError(
                    f"SynthConfig.{name} = {getattr(self, name)} x tier_block ({self.tier_block}) "
                    f"= {per_block:g} questions a block must be a whole number: use a multiple of "
                    f"1/{self.tier_block} as the share, another tier_block, or tier_block = 0 "
                    "(independent draws)"
                )
        if self.medium_detail_share > 0 and self.pattern_weight <= 0:
            raise ValueError(
                f"SynthConfig.medium_detail_share = {self.medium_detail_share} > 0 needs the "
                "pattern family (pattern_weight > 0), the only one with a medium tier; or set it to 0"
            )
        if not 0 <= self.medium_echo_truth <= 1 or not 0 < self.medium_echo_strength < 1:
            raise ValueError(
                "SynthConfig.medium_echo_truth must be in [0, 1] and medium_echo_strength in (0, 1); "
                f"got {self.medium_echo_truth}, {self.medium_echo_strength}"
            )
        if self.medium_echo_cell < 2 or self.medium_echo_cell % 2:
            raise ValueError(
                f"SynthConfig.medium_echo_cell = {self.medium_echo_cell} must be even and >= 2 "
                "(so the 0.5 view keeps it); use 2"
            )
        if sum(self.family_weights().values()) <= 0:
            raise ValueError(
                "SynthConfig: all of pattern_weight, colour_weight, shape_weight, count_weight, "
                "digit_weight are "
                "0; give at least one family a positive weight"
            )
        if self.small_detail_share > 0 and not any(
            self.family_weights()[f] > 0 for f in SMALL_TIER_FAMILIES
        ):
            raise ValueError(
                f"SynthConfig.small_detail_share = {self.small_detail_share} > 0 needs a family "
                f"with a small tier ({', '.join(SMALL_TIER_FAMILIES)}) to have a positive weight; "
                "set pattern_weight > 0 or small_detail_share = 0"
            )

    def _check_details(self) -> None:
        smallest_panel = int(self.min_side / 2 * self.panel_min_frac)
        if not 2 <= self.swatch_inset_min <= self.swatch_inset_max <= smallest_panel // 4:
            raise ValueError(
                "SynthConfig.swatch_inset_min / swatch_inset_max must satisfy 2 <= min <= max <= "
                f"{smallest_panel // 4} (a quarter of the smallest panel); got "
                f"{self.swatch_inset_min}, {self.swatch_inset_max}"
            )
        if not 0.2 <= self.shape_min_frac <= self.shape_max_frac <= 0.85:
            raise ValueError(
                "SynthConfig.shape_min_frac / shape_max_frac must satisfy 0.2 <= min <= max <= "
                f"0.85; got {self.shape_min_frac}, {self.shape_max_frac}"
            )
        if not 0 <= self.fine_dark < 1:
            raise ValueError(f"SynthConfig.fine_dark = {self.fine_dark} must be in [0, 1) (0.3: as large textures)")
        if self.large_cell < 2:
            raise ValueError(
                f"SynthConfig.large_cell = {self.large_cell} must be >= 2, or large patterns "
                "vanish at low res too; use 4"
            )
        if self.max_count < 1 or self.max_count * (self.dot_size + 6) > smallest_panel:
            raise ValueError(
                f"SynthConfig.max_count = {self.max_count} dots of {self.dot_size} px must fit a "
                f"{smallest_panel} px panel; lower max_count or dot_size"
            )
        if self.edge_taper * 4 >= smallest_panel - 2 * self.swatch_inset_max:
            raise ValueError(
                f"SynthConfig.edge_taper = {self.edge_taper} leaves little full-contrast texture; "
                "lower it (3 is the default)"
            )

    def family_weights(self) -> dict[str, float]:
        """Relative weight of each family (zero-weight families are never drawn)."""
        return {
            "pattern": self.pattern_weight,
            "colour": self.colour_weight,
            "shape": self.shape_weight,
            "count": self.count_weight,
            "digit": self.digit_weight,
        }


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # folder with train/val/test .jsonl; None = run_dir/data (synthetic)
    train: str = "train.jsonl"
    val: str = "val.jsonl"
    test: str = "test.jsonl"
    max_image_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    n_train: int = 4000  # synthetic samples per split (when dir is None)
    n_val: int = 200
    n_test: int = 200

    def __post_init__(self) -> None:
        if self.max_image_pixels < 10_000:
            raise ValueError(f"data.max_image_pixels={self.max_image_pixels} is too small; use >= 10000")
        for name in ("n_train", "n_val", "n_test"):
            require(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), ">= 1")
