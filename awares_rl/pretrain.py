"""``awares-rl pretrain``: teach the tiny VLM to read, as a plain VQA model (no tool).

It plays the role Qwen2.5-VL plays in the paper: the base model whose low-res and full-res answers
decide, later, which samples need a crop. Training samples stream from the synthetic generator
(never repeating, never touching the val split) at MIXED resolutions: the full image, its 0.5
low-res view, and full-resolution crops of the crop set, so the model reads all three.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from awares_rl.algo import weighted_token_nll
from awares_rl.core.crops import NUM_CROPS, boxes_to_crops, crop_boxes, cut_crops, low_res_view
from awares_rl.core.sample import Sample
from awares_rl.learner.batch import collate_sequences, model_inputs
from awares_rl.learner.conversation import (
    Conversation,
    conversation_to_sequence,
    multi_qa_conversation,
)
from awares_rl.learner.fast_vision import fast_vision
from awares_rl.models.tiny import TinyModelConfig, build_tiny
from awares_rl.vqa import accuracy_by_group, answer_questions
from data_pipeline.config import SynthConfig
from data_pipeline.scene import (
    locate_question,
    locate_questions,
    make_scene,
    panel_questions,
    vocab_texts,
)
from reward.judges import exact_match

VIEWS = ("full", "low", "crop")



def correct(predictions: list[str], answers: list) -> list[bool]:
    """Exact-match correctness of each prediction (the reward's ``exact_match``, normalised)."""
    return [score == 1.0 for score in exact_match(predictions, [list(a) for a in answers])]

@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining of the base VQA model on streamed synthetic samples."""

    out_dir: str = "runs/pretrain"  # checkpoint (out_dir/model) and log (out_dir/pretrain_log.json)
    seed: int = 0  # model init, data stream and view choice
    steps: int = 300  # optimizer steps (~6-8 min on 2 cores with the default data)
    batch_size: int = 16  # conversations per step
    lr: float = 5e-4  # peak AdamW lr; > 5e-4 collapsed the vision tower in trials (STACK.md)
    warmup_steps: int = 20  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm
    threads: int = 2  # torch.set_num_threads; match the cores granted
    view_full: float = 0.3  # probability of training on the full-res image
    view_low: float = 0.35  # ... on the 0.5 low-res view
    view_crop: float = 0.35  # ... on a full-res crop of the crop set (asked about panels in it)
    questions_per_image: int = 4  # QA turns per training image (one per visible panel, at most)
    # grounding turns ("Which crop shows the red panel?" -> "2") added per low-res image, about
    # the panels that hold a detail. Mixed into reading conversations alone they stayed at chance
    # (25% after 300 steps, tiny Qwen3-VL with a sin-cos position table); grounding-only
    # conversations (``locate_only_share`` of each batch) beside reading learn it (README).
    locate_per_image: int = 0
    locate_only_share: float = 0.0  # share of each batch's conversations that are grounding-only
    probe_every: int = 50  # steps between val probes (grounding, per-tier low-res accuracy); 0: none
    probe_samples: int = 64  # val samples each probe scores
    eval_samples: int = 200  # val samples scored at low and full res after training (0: skip)
    eval_batch_size: int = 16
    time_budget_s: float = 0.0  # stop training after this many seconds (0: no limit)
    log_every: int = 10  # steps between learning-curve points
    fast_vision: bool = True  # batched window attention + linear patch embed (same math, faster)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("PretrainConfig.steps and batch_size must be >= 1")
        if not 0 < self.lr <= 5e-3:
            raise ValueError(f"PretrainConfig.lr = {self.lr} must be in (0, 5e-3]; 5e-4 works")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("PretrainConfig.warmup_steps must be >= 0, min_lr_ratio in [0, 1]")
        views = (self.view_full, self.view_low, self.view_crop)
        if min(views) < 0 or sum(views) <= 0:
            raise ValueError(
                "PretrainConfig.view_full / view_low / view_crop must be >= 0 and not all 0"
            )
        if self.questions_per_image < 1 or self.locate_per_image < 0:
            raise ValueError("PretrainConfig.questions_per_image must be >= 1, locate_per_image >= 0")
        if not 0 <= self.locate_only_share < 1:
            raise ValueError(f"pretrain.locate_only_share = {self.locate_only_share} must be in [0, 1)")
        if self.threads < 1:
            raise ValueError(f"PretrainConfig.threads = {self.threads} must be >= 1")


def visible_panels(sample: Sample, box: tuple[int, int, int, int]) -> list[int]:
    """Indices of the panels of a synthetic sample that lie wholly inside ``box``."""
    x1, y1, x2, y2 = box
    return [
        q for q, p in enumerate(sample.meta["panels"])
        if x1 <= p["panel_box"][0] and y1 <= p["panel_box"][1]
        and p["panel_box"][2] <= x2 and p["panel_box"][3] <= y2
    ]


def view_and_panels(
    image: Image.Image, sample: Sample, view: str, rng: np.random.Generator
) -> tuple[Image.Image, list[int]]:
    """The image the model sees and the panels it may be asked about: the full image or its
    0.5 low-res view (all panels), or a full-res crop of the crop set (the panels inside it)."""
    if view == "full":
        return image, list(range(len(sample.meta["panels"])))
    if view == "low":
        return low_res_view(image), list(range(len(sample.meta["panels"])))
    crop_id = int(rng.integers(0, NUM_CROPS))
    inside = visible_panels(sample, crop_boxes(image.width, image.height, [crop_id])[0])
    if not inside:  # fall back to the quadrant of a random panel (it always holds that panel)
        k = int(rng.integers(0, len(sample.meta["panels"])))
        crop_id, inside = sample.meta["panels"][k]["quadrant"], [k]
    return cut_crops(image, [crop_id])[0], inside


def training_stream(cfg: PretrainConfig) -> Iterator[Conversation]:
    """Endless conversations from the "train" split: one image at a random view, then up to
    ``questions_per_image`` questions about its visible panels and (full or low view) up to
    ``locate_per_image`` grounding questions, in random order."""
    rng = np.random.default_rng(cfg.seed)
    p = np.array([cfg.view_full, cfg.view_low, cfg.view_crop], float)
    index = 0
    while True:
        sample, image = make_scene(cfg.seed, "train", index, cfg.synth)
        view = VIEWS[int(rng.choice(3, p=p / p.sum()))]
        shown, panels = view_and_panels(image, sample, view, rng)
        qas = [(q, a) for q, a, _ in panel_questions(sample, panels)]
        qas = [qas[i] for i in rng.permutation(len(qas))[: cfg.questions_per_image]]
        if view == "low":  # where the policy needs it; asked on full views too, it stayed at chance
            where = locate_questions(sample)
            qas += [where[i] for i in rng.permutation(len(where))[: cfg.locate_per_image]]
        yield multi_qa_conversation(shown, [qas[i] for i in rng.permutation(len(qas))])
        index += 1


def grounding_stream(cfg: PretrainConfig) -> Iterator[Conversation]:
    """Endless grounding-only conversations ("Which crop shows the red panel?" -> crop id) on
    the low-res view (where the policy needs it; with full views too it learned slower), from
    "train" samples far past those ``training_stream`` draws."""
    index = 10_000_000  # disjoint from the reading stream's samples
    while True:
        sample, image = make_scene(cfg.seed, "train", index, cfg.synth)
        yield multi_qa_conversation(low_res_view(image), locate_questions(sample))
        index += 1


def next_conversations(stream, grounding, cfg: PretrainConfig) -> list[Conversation]:
    """A step's batch: ``locate_only_share`` of it (rounded) grounding-only, the rest reading."""
    n = round(cfg.locate_only_share * cfg.batch_size)
    return [next(grounding) for _ in range(n)] + [next(stream) for _ in range(cfg.batch_size - n)]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _grad_norm(params) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def collate(conversations: list[Conversation], processor) -> dict:
    """The training batch of ``conversations`` (``collate_sequences``, the learner's one collate)."""
    return collate_sequences([conversation_to_sequence(c, processor) for c in conversations], processor)


def train_step(model, batch: dict, optimizer, cfg: PretrainConfig) -> dict[str, float]:
    """One optimizer step on a collated batch; returns loss and gradient norms. The targets are
    the tokens with a loss weight (``loss_weights``), so the labels are the input ids."""
    logits = model(**model_inputs(batch)).logits
    loss, _ = weighted_token_nll(logits, batch["input_ids"], batch["loss_weights"])
    loss.backward()
    vision = _grad_norm(model.model.visual.parameters())
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "grad_norm": total, "vision_grad_norm": vision}


def train_loop(model, processor, optimizer, cfg: PretrainConfig) -> tuple[list[dict], int]:
    """Run the optimizer steps (stopping early at ``time_budget_s``); returns the learning curve
    and the number of steps done."""
    stream, curve, start, step = training_stream(cfg), [], time.perf_counter(), -1
    grounding = grounding_stream(cfg)
    probes: list[dict] = []
    for step in (bar := tqdm(range(cfg.steps), desc="pretrain", dynamic_ncols=True)):
        if cfg.probe_every and step % cfg.probe_every == 0 and step:
            probes.append({"step": step, **probe(model, processor, cfg)})
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = collate(next_conversations(stream, grounding, cfg), processor)
        stats = train_step(model, batch, optimizer, cfg)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{stats['loss']:.3f}", vis=f"{stats['vision_grad_norm']:.2f}")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            curve.append({"step": step, "lr": lr_at(step, cfg), "elapsed_s": round(elapsed, 1), **stats})
        if cfg.time_budget_s and elapsed > cfg.time_budget_s:
            break
    if cfg.probe_every:
        probes.append({"step": step + 1, **probe(model, processor, cfg)})
    return curve, probes, step + 1


def probe(model, processor, cfg: PretrainConfig) -> dict[str, float]:
    """Low-res accuracy on the first ``probe_samples`` val samples: the grounding question and
    the asked question per tier (``<tier>_low``); the model is back in train mode after."""
    scenes = [make_scene(cfg.seed, "val", i, cfg.synth) for i in range(cfg.probe_samples)]
    images = [low_res_view(im) for _, im in scenes]
    asked = [locate_question(s.meta["panels"][s.meta["panel"]]) for s, _ in scenes]
    model.eval()
    where = answer_questions(model, processor, images, [q for q, _ in asked], cfg.eval_batch_size)
    what = answer_questions(model, processor, images, [s.question for s, _ in scenes], cfg.eval_batch_size)
    model.train()
    out = {"grounding": float(np.mean(correct(where, [(a,) for _, a in asked])))}
    by_tier = accuracy_by_group(correct(what, [s.answers for s, _ in scenes]),
                                [s.meta["tier"] for s, _ in scenes])
    out.update({f"{t}_low": v["accuracy"] / 100 for t, v in by_tier.items() if t != "all"})
    return out


def fit(cfg: PretrainConfig) -> Path:
    """Train, save ``out_dir/model`` (transformers-loadable), log the curve and the val accuracy."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    model, processor = build_tiny(cfg.model, vocab_texts(cfg.synth))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    with fast_vision(model) if cfg.fast_vision else contextlib.nullcontext():
        curve, probes, steps_done = train_loop(model, processor, optimizer, cfg)
    train_s = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    report = evaluate_views(model, processor, cfg) if cfg.eval_samples else {}
    log = {"config": asdict(cfg), "train_seconds": round(train_s, 1), "steps_done": steps_done,
           "curve": curve, "probes": probes, "eval": report}
    (out / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    return out / "model"


def eval_image(image: Image.Image, sample: Sample, view: str) -> Image.Image:
    """The image scored for ``view``: full, the 0.5 low-res view, or the crop that the
    evidence maps to (what a policy would request)."""
    if view == "low":
        return low_res_view(image)
    if view == "crop":
        return cut_crops(image, boxes_to_crops(image.width, image.height, sample.evidence_boxes))[0]
    return image


def evaluate_views(
    model, processor, cfg: PretrainConfig, split: str = "val", views=("full", "low", "crop")
) -> dict:
    """Accuracy (exact match, greedy) on ``cfg.eval_samples`` samples of ``split`` per view,
    grouped by tier (small = needs high res) and by family/tier."""
    scenes = [make_scene(cfg.seed, split, i, cfg.synth) for i in range(cfg.eval_samples)]
    groups = [s.meta["tier"] for s, _ in scenes]
    families = [f"{s.meta['family']}/{s.meta['tier']}" for s, _ in scenes]
    report = {}
    for view in views:
        images = [eval_image(im, s, view) for s, im in scenes]
        preds = answer_questions(
            model, processor, images, [s.question for s, _ in scenes], cfg.eval_batch_size
        )
        right = correct(preds, [s.answers for s, _ in scenes])
        report[view] = {"tier": accuracy_by_group(right, groups),
                        "family": accuracy_by_group(right, families)}
    if "low" in views:  # grounding at low res: the crop id of the asked-about panel
        images = [low_res_view(im) for _, im in scenes]
        asked = [locate_question(s.meta["panels"][s.meta["panel"]]) for s, _ in scenes]
        preds = answer_questions(model, processor, images, [q for q, _ in asked], cfg.eval_batch_size)
        report["locate_low"] = accuracy_by_group(correct(preds, [(a,) for _, a in asked]), groups)
    return report

