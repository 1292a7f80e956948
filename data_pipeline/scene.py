"""One synthetic scene: four coloured panels, one per quadrant; one holds the asked-about detail.

Design (why a tiny VLM learns it in minutes; measurements in data_pipeline/README.md):
  - The question names a panel by its colour ("the red panel"): a coarse cue that survives any
    downscale. Panels lie inside the four quadrants, so the crop that shows a detail at full
    resolution is unambiguous: quadrant q -> crop id q (``awares_rl.core.crops``).
  - The default detail is a texture swatch in the panel's colour (pattern: horizontal, vertical,
    checker), anchored to the image origin so that each 14-px ViT patch sees one fixed template.
  - Small tier: 1-px cells (period 2), which the 0.5 low-res view averages to a flat tint
    (``needs_high_res = True``); large tier: the same textures with 7-px cells, readable at low res.
    ``fine_dark`` below 0.3 draws 1-px textures darker than large ones, so that tint shows THAT a
    fine detail is there (not which): with equal means the tiny model read it as one class.
  - Medium tier: the small tier's 1-px texture under a faint 2-px "echo" that survives the 0.5
    view; the echo shows the answer's class with probability ``medium_echo_truth`` and another
    class otherwise (``needs_high_res`` = the echo is wrong). The low-res view reads it right only
    sometimes and looks the same either way, so whether a crop pays is a bet that GRPO's reward,
    not the judge's per-sample labels, settles.
  - Other panels hold a detail of another family or nothing (``distractors``), so no two panels
    answer the same question. Opt-in families: colour or shape of a large mark, a count of large
    dots, digits (the OCR-like tier).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

from awares_rl.core.crops import crop_box
from awares_rl.core.sample import Sample
from data_pipeline import render
from data_pipeline.config import MEDIUM_TIER_FAMILIES, SMALL_TIER_FAMILIES, SynthConfig
from data_pipeline.render import MARK_COLOURS, PALETTE, PATTERNS, SHAPES, Box

QUESTIONS = {
    "pattern": "What pattern is in the {colour} panel?",
    "colour": "What colour is the mark in the {colour} panel?",
    "shape": "What shape is in the {colour} panel?",
    "count": "How many dots are in the {colour} panel?",
    "digit": "What digit is in the {colour} panel?",
}
ANSWER_SPACE = {
    "pattern": PATTERNS,
    "colour": tuple(MARK_COLOURS),
    "shape": SHAPES,
    "count": tuple(str(i) for i in range(1, 10)),
    "digit": tuple(str(i) for i in range(10)),
}
# The grounding question, answered by the crop id (quadrant 0..3) that holds the named panel: the
# very token a GET_CROPS call names. Pretraining turns (``pretrain.locate_per_image``), the probes
# and eval mode "grounding" use it.
LOCATE_QUESTION = "Which crop shows the {colour} panel?"
_MARGIN = 6  # px between a detail and its panel's border


def sample_seed(seed: int, split: str, index: int) -> int:
    """64-bit seed of sample ``index`` of ``split``: a hash, so splits draw disjoint streams."""
    return stream_seed(seed, split, index)


def stream_seed(*parts: object) -> int:
    """64-bit seed hashed from ``parts`` ("awares-synth/v1/" + parts joined by "/")."""
    digest = hashlib.sha256("/".join(("awares-synth/v1", *map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_id(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def tier_families(tier: str) -> tuple[str, ...] | None:
    """Families that have ``tier`` (None: all of them)."""
    return {"small": SMALL_TIER_FAMILIES, "medium": MEDIUM_TIER_FAMILIES}.get(tier)


def tier_of(u: float, cfg: SynthConfig) -> str:
    """"small" for ``u`` below ``small_detail_share``, "medium" below the two shares' sum, else
    "large" (``u`` uniform in [0, 1): the independent draw)."""
    if u < cfg.small_detail_share:
        return "small"
    return "medium" if u < cfg.small_detail_share + cfg.medium_detail_share else "large"


def draw_tier(rng: np.random.Generator, cfg: SynthConfig) -> str:
    """An independent tier draw (a distractor panel's detail)."""
    return tier_of(rng.random(), cfg)


@lru_cache(maxsize=64)
def block_tiers(seed: int, split: str, block: int, cfg: SynthConfig) -> tuple[str, ...]:
    """The asked tiers of samples ``block * tier_block`` .. ``(block + 1) * tier_block - 1``: the
    block's quota of small and medium questions (the shares x ``tier_block``) in a seeded order."""
    n = cfg.tier_block
    small, medium = round(cfg.small_detail_share * n), round(cfg.medium_detail_share * n)
    tiers = ["small"] * small + ["medium"] * medium + ["large"] * (n - small - medium)
    order = np.random.default_rng(stream_seed(seed, split, "tiers", block)).permutation(n)
    return tuple(tiers[i] for i in order)


def asked_tier(rng: np.random.Generator, seed: int, split: str, index: int, cfg: SynthConfig) -> str:
    """The tier of sample ``index``'s question: its block's quota (``cfg.tier_block``), or an
    independent draw when ``tier_block`` is 0. One draw of ``rng`` either way, so the rest of a
    sample (size, colours, layout, texture) is the same under both."""
    u = rng.random()
    if not cfg.tier_block:
        return tier_of(u, cfg)
    block, position = divmod(index, cfg.tier_block)
    return block_tiers(seed, split, block, cfg)[position]


def draw_kind(rng: np.random.Generator, cfg: SynthConfig, tier: str) -> str:
    """The question's family, drawn among those that have ``tier``."""
    weights, allowed = cfg.family_weights(), tier_families(tier)
    names = [f for f, w in weights.items() if w > 0 and (allowed is None or f in allowed)]
    p = np.array([weights[f] for f in names], float)
    return str(rng.choice(names, p=p / p.sum()))


def distractor_tier(rng: np.random.Generator, family: str, cfg: SynthConfig) -> str:
    """The tier of a distractor panel's detail: drawn as the question's, if its family has it."""
    tier = draw_tier(rng, cfg)
    allowed = tier_families(tier)
    return tier if allowed is None or family in allowed else "large"


def image_size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """(width, height), each a multiple of ``side_step`` in [min_side, max_side]."""
    steps = np.arange(cfg.min_side, cfg.max_side + 1, cfg.side_step)
    return int(rng.choice(steps)), int(rng.choice(steps))


def panel_boxes(rng: np.random.Generator, width: int, height: int, cfg: SynthConfig) -> list[Box]:
    """One panel per quadrant (crop ids 0..3), each strictly inside its quadrant."""
    boxes = []
    for q in range(4):
        qx1, qy1, qx2, qy2 = crop_box(width, height, q)
        pw = int((qx2 - qx1) * rng.uniform(cfg.panel_min_frac, cfg.panel_max_frac))
        ph = int((qy2 - qy1) * rng.uniform(cfg.panel_min_frac, cfg.panel_max_frac))
        x = qx1 + 4 + int(rng.integers(0, qx2 - qx1 - pw - 8 + 1))
        y = qy1 + 4 + int(rng.integers(0, qy2 - qy1 - ph - 8 + 1))
        boxes.append((x, y, x + pw, y + ph))
    return boxes


def _place(rng: np.random.Generator, panel: Box, w: int, h: int) -> Box:
    """A random ``w`` x ``h`` box inside ``panel``, ``_MARGIN`` px from its border."""
    x1, y1, x2, y2 = panel
    x = x1 + _MARGIN + int(rng.integers(0, x2 - x1 - w - 2 * _MARGIN + 1))
    y = y1 + _MARGIN + int(rng.integers(0, y2 - y1 - h - 2 * _MARGIN + 1))
    return (x, y, x + w, y + h)


def fill_pattern(canvas, rng, panel, colour, tier, cfg) -> tuple[str, list[Box], bool]:
    """A texture swatch filling the panel but for a plain rim; 1-px cells when small or medium
    (medium: under an echo). Returns (answer, evidence boxes, whether the low-res view shows the
    answer)."""
    kind = str(rng.choice(PATTERNS))
    small = tier != "large"
    cell = 1 if small else cfg.large_cell
    x1, y1, x2, y2 = panel
    inset = [int(rng.integers(cfg.swatch_inset_min, cfg.swatch_inset_max + 1)) for _ in range(4)]
    box = _even((x1 + inset[0], y1 + inset[1], x2 - inset[2], y2 - inset[3]))
    # Anchored to the image origin (phase = the box corner): every 14-px patch of the full image,
    # of its 0.5 view and of any crop then sees the same phase of a 1-px or 7-px texture, so a
    # texture is one fixed template per class that a patch embedding learns linearly.
    phase = (box[1], box[0])
    taper = cfg.edge_taper if small else 0
    render.draw_pattern(canvas, box, kind, colour, cell, phase, taper, cfg.fine_dark if small else render.DARK)
    if tier != "medium":
        return kind, [box], tier == "large"
    others = [p for p in PATTERNS if p != kind]
    echo = kind if rng.random() < cfg.medium_echo_truth else str(rng.choice(others))
    render.draw_echo(canvas, box, echo, cfg.medium_echo_cell, phase, cfg.medium_echo_strength, taper)
    return kind, [box], echo == kind


def _even(box: Box) -> Box:
    """Shrink a box to even corners (1-px textures then pair up exactly under the 0.5 view)."""
    x1, y1, x2, y2 = box
    return (x1 + x1 % 2, y1 + y1 % 2, x2 - x2 % 2, y2 - y2 % 2)


def _mark_box(rng: np.random.Generator, panel: Box, cfg: SynthConfig) -> Box:
    """A square for a mark, its side a random fraction of the panel's short side."""
    short = min(panel[2] - panel[0], panel[3] - panel[1]) - 2 * _MARGIN
    side = int(short * rng.uniform(cfg.shape_min_frac, cfg.shape_max_frac))
    return _place(rng, panel, side, side)


def fill_colour(canvas, rng, panel, colour, tier, cfg) -> tuple[str, list[Box], bool]:
    """A large mark of a random shape whose colour (from ``MARK_COLOURS``) is the answer."""
    name, kind = str(rng.choice(list(MARK_COLOURS))), str(rng.choice(SHAPES))
    return name, [render.draw_shape(canvas, _mark_box(rng, panel, cfg), kind, MARK_COLOURS[name])], True


def fill_shape(canvas, rng, panel, colour, tier, cfg) -> tuple[str, list[Box], bool]:
    """A large INK mark whose shape is the answer."""
    kind = str(rng.choice(SHAPES))
    return kind, [render.draw_shape(canvas, _mark_box(rng, panel, cfg), kind)], True


def fill_count(canvas, rng, panel, colour, tier, cfg) -> tuple[str, list[Box], bool]:
    n = int(rng.integers(1, cfg.max_count + 1))
    cell = cfg.dot_size + 6
    x1, y1, x2, y2 = panel
    cols, rows = (x2 - x1 - 2 * _MARGIN) // cell, (y2 - y1 - 2 * _MARGIN) // cell
    cells = rng.choice(cols * rows, size=n, replace=False)
    boxes = []
    for c in sorted(int(c) for c in cells):
        x = x1 + _MARGIN + (c % cols) * cell + int(rng.integers(0, 7))
        y = y1 + _MARGIN + (c // cols) * cell + int(rng.integers(0, 7))
        boxes.append(render.draw_dot(canvas, (x, y, x + cfg.dot_size, y + cfg.dot_size)))
    return str(n), boxes, True


def fill_digit(canvas, rng, panel, colour, tier, cfg) -> tuple[str, list[Box], bool]:
    text = str(int(rng.integers(0, 10)))
    px = cfg.digit_small_px if tier == "small" else cfg.digit_large_px
    w, h = render.digit_size(text, px)
    x1, y1, _, _ = _place(rng, panel, w + 2, h + 2)
    return text, [render.draw_digit(canvas, (x1, y1), text, px)], tier != "small"


FILLERS = {
    "pattern": fill_pattern,
    "colour": fill_colour,
    "shape": fill_shape,
    "count": fill_count,
    "digit": fill_digit,
}


def distractor_families(rng: np.random.Generator, family: str, n: int, cfg: SynthConfig) -> list[str | None]:
    """Families of the ``n`` non-target panels' details (None: a plain panel).

    "other-family": each enabled family at most once per image (so no two panels share a
    question and no binding is needed), the rest plain; "same-family": all ``family``;
    "none": all plain.
    """
    if cfg.distractors == "same-family":
        return [family] * n
    others = [f for f, w in cfg.family_weights().items() if w > 0 and f != family]
    if cfg.distractors == "none" or not others:
        return [None] * n
    chosen: list[str | None] = [str(f) for f in rng.permutation(others)[:n]]
    chosen += [None] * (n - len(chosen))
    return [chosen[i] for i in rng.permutation(n)]


def make_scene(seed: int, split: str, index: int, cfg: SynthConfig) -> tuple[Sample, Image.Image]:
    """Sample ``index`` of ``split``: the image and its Sample (image path ``images/<id>.png``).

    Deterministic in (seed, split, index, cfg). ``cfg.panels`` quadrants get a panel; the question
    asks about one of them (``meta["panel"]`` indexes ``meta["panels"]``); the others carry
    distractor details chosen by ``cfg.distractors``. ``meta["panels"]`` describes each (colour,
    family, answer, tier, quadrant, evidence boxes), so a trainer can ask about all of them.
    """
    rng = np.random.default_rng(sample_seed(seed, split, index))
    width, height = image_size(rng, cfg)
    tier_asked = asked_tier(rng, seed, split, index, cfg)
    family = draw_kind(rng, cfg, tier_asked)
    colours = [str(c) for c in rng.choice(list(PALETTE), size=4, replace=False)]
    drawn = sorted(int(q) for q in rng.choice(4, size=cfg.panels, replace=False))
    target = int(rng.integers(0, cfg.panels))  # index into ``drawn``
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = int(rng.integers(228, 250))
    boxes_by_quadrant = panel_boxes(rng, width, height, cfg)
    families = distractor_families(rng, family, cfg.panels - 1, cfg)
    families.insert(target, family)
    panels, hit_index, low_res_ok = [], 0, True
    for k, q in enumerate(drawn):
        x1, y1, x2, y2 = panel = boxes_by_quadrant[q]
        canvas[y1:y2, x1:x2] = PALETTE[colours[q]]
        fam = families[k]
        if fam is None:
            continue
        tier = tier_asked if k == target else distractor_tier(rng, fam, cfg)
        value, boxes, readable = FILLERS[fam](canvas, rng, panel, PALETTE[colours[q]], tier, cfg)
        if k == target:  # index into ``panels`` (plain panels are not listed)
            hit_index, low_res_ok = len(panels), readable
        panels.append({"colour": colours[q], "family": fam, "answer": value, "quadrant": q,
                       "tier": tier, "boxes": [list(b) for b in boxes],
                       "panel_box": list(panel)})
    sid, hit = sample_id(split, index), panels[hit_index]
    sample = Sample(
        id=sid,
        image=f"images/{sid}.png",
        question=QUESTIONS[family].format(colour=hit["colour"]),
        answers=(hit["answer"],),
        evidence_boxes=tuple(tuple(b) for b in hit["boxes"]),
        metric="exact",
        needs_high_res=not low_res_ok,
        meta={"family": family, "tier": hit["tier"], "panel": hit_index, "width": width,
              "height": height, "panels": panels,
              "layout": [{"colour": colours[q], "quadrant": q} for q in drawn]},
    )
    return sample, Image.fromarray(canvas)


def panel_questions(sample: Sample, which: list[int] | None = None) -> list[tuple[str, str, dict]]:
    """(question, answer, panel) about panels ``which`` (default: all) of a synthetic sample."""
    panels = sample.meta["panels"]
    which = range(len(panels)) if which is None else which
    return [
        (QUESTIONS[panels[q]["family"]].format(colour=panels[q]["colour"]), panels[q]["answer"],
         panels[q])
        for q in which
    ]


def locate_question(panel: dict) -> tuple[str, str]:
    """(question, crop id) asking where a panel (``colour``, ``quadrant``) is."""
    return LOCATE_QUESTION.format(colour=panel["colour"]), str(panel["quadrant"])


def locate_questions(sample: Sample) -> list[tuple[str, str]]:
    """Grounding pairs, one per panel that holds a detail (``meta["panels"]``; plain ones are
    not asked about). With the default distractors only the asked panel holds one, so "where is
    it" is "where is the panel with something in it": what a crop call must name. Asking about
    plain panels too (binding a colour word to one of four regions) stayed at chance (25%) for
    400 steps in tiny models (README)."""
    return [locate_question(p) for p in sample.meta.get("panels", [])]


def vocab_texts(cfg: SynthConfig) -> list[str]:
    """Every question and answer the generator can emit (the tiny tokenizer's training texts)."""
    families = [f for f, w in cfg.family_weights().items() if w > 0]
    texts = [QUESTIONS[f].format(colour=c) for f in families for c in PALETTE]
    texts += [a for f in families for a in ANSWER_SPACE[f]]
    texts += [LOCATE_QUESTION.format(colour=c) for c in PALETTE] + [str(q) for q in range(4)]
    return texts
