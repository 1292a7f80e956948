"""``awares-rl eval``: accuracy against cost for three ways of answering (ARCHITECTURE.md, "Metrics").

- ``low``: one turn on the low-res view, the plain VQA prompt the base model was trained with
  (``data_pipeline.grounding.vqa_prompt_ids``: no tool prompt), RTR = low / full pixels (0.25).
  Every mode asks the question with its benchmark's answer prompt (``awares_rl.core.prompts``).
- ``full``: one turn on the whole image, same prompt, RTR = 1.
- ``policy``: the AwaRes episode (``EpisodeRunner``, greedy): low-res view, optional GET_CROPS,
  answer; the paper's RTR per episode.

Per mode: accuracy (judge score >= ``reward.correct_threshold``; the judge is the sample's benchmark
metric's, ``reward.judge`` when it has none: ``reward.judges.route_judge``) overall and by
metric, mean judge score, how many answers ``eval.max_new_tokens`` cut off (``truncated``: a cut
single-turn answer is scored as it stands, a cut policy episode has no answer and scores 0), paper
RTR, the exact visual tokens the processor produced and their ratio to the full-res image's, seconds per sample (engine wall time / batch size), and for the
policy the crop rate, tool-call validity and, given trajectory labels (``needs_crop``), the
crop-decision accuracy and the Jaccard overlap of the crops taken with the labelled ones.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from PIL import Image
from rich.table import Table
from tqdm import tqdm

from awares_rl.core.crops import low_res_view, retained_token_ratio
from awares_rl.core.engine import GenRequest
from awares_rl.core.images import ImageError, load_image
from awares_rl.core.prompts import sample_question
from awares_rl.core.sample import Sample, SampleError, iter_jsonl
from awares_rl.core.tokens import IMAGE_TOKEN, image_token_counts
from awares_rl.core.trajectory import Trajectory
from awares_rl.rollout import EpisodeRunner, EpisodeSettings, SamplingConfig, make_engine
from data_pipeline.grounding import vqa_prompt_ids
from reward.judges import route_judge
from reward.scoring import judge_batch

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

MODES = ("low", "full", "policy", "grounding")  # grounding: "Which crop shows ...?" at low res

@dataclass(frozen=True)
class EvalConfig:
    modes: list[Literal["low", "full", "policy"]] = field(default_factory=lambda: ["low", "full", "policy"])
    split: Literal["train", "val", "test"] = "test"  # data split when no --data is given
    n: int = 0  # samples evaluated (0: all)
    batch_size: int = 16  # samples per engine call
    max_new_tokens: int = 24  # per turn
    MOVED_KEYS: ClassVar[dict[str, str]] = {"correct_threshold": "reward.correct_threshold"}

    def __post_init__(self) -> None:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"eval.modes must be a non-empty list of distinct modes, got {self.modes}")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.n < 0:
            raise ValueError("eval.batch_size and eval.max_new_tokens must be >= 1, eval.n >= 0")



@dataclass
class EvalItem:
    """A sample, and its trajectory label when one is known."""

    sample: Sample
    needs_crop: bool | None = None
    crop_ids: list[int] = field(default_factory=list)


@dataclass
class Prediction:
    """One answer of one mode, and what it cost."""

    sample_id: str
    answer: str | None
    visual_tokens: int
    full_visual_tokens: int
    rtr: float
    seconds: float
    crop_ids: list[int] = field(default_factory=list)
    tool_call: str = "none"  # none | valid | invalid:<reason> (policy mode)
    score: float = 0.0
    correct: bool = False
    error: str | None = None  # why the sample could not be asked (its image): flagged, scored 0
    truncated: bool = False  # a turn hit eval.max_new_tokens (scored as it stands: counted, not dropped)


def flagged(sample_id: str, reason: str) -> Prediction:
    """The prediction of a sample that could not be asked: no answer, wrong, ``error`` = reason."""
    return Prediction(sample_id, None, 0, 0, float("nan"), 0.0, error=reason)


def read_items(path: str | Path) -> list[EvalItem]:
    """Sample JSONL or trajectory JSONL (then ``needs_crop`` / ``crop_ids`` are the labels)."""
    items = []
    for lineno, line in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SampleError(where, "<line>", f"invalid JSON ({e.msg} at column {e.colno})") from e
        if isinstance(obj, dict) and "turns" in obj:
            t = Trajectory.from_json(obj, where)
            s = Sample(t.id, t.image, t.question, t.answers, metric=t.metric, needs_high_res=t.needs_high_res,
                       meta={"source": t.benchmark} if t.benchmark else {})
            items.append(EvalItem(s, t.needs_crop, list(t.crop_ids)))
        else:
            items.append(EvalItem(Sample.from_json(obj, where)))
    return items


def attach_labels(items: list[EvalItem], trajectories: str | Path) -> None:
    """Set ``needs_crop`` / ``crop_ids`` of the items whose id a trajectory file labels."""
    labels = {i.sample.id: i for i in read_items(trajectories)}
    for item in items:
        if item.sample.id in labels:
            item.needs_crop, item.crop_ids = labels[item.sample.id].needs_crop, labels[item.sample.id].crop_ids


def grounding_items(items: list[EvalItem]) -> list[EvalItem]:
    """The grounding probe of synthetic samples: "Which crop shows the <colour> panel?" about the
    asked panel, answered by its quadrant's crop id (exact match) on the low-res view. ValueError
    names the first sample without the generator's ``meta.panels``."""
    from data_pipeline.scene import locate_question

    out = []
    for it in items:
        s, panels = it.sample, it.sample.meta.get("panels")
        if not panels:
            raise ValueError(f"sample {s.id!r} has no meta.panels: the grounding probe needs the "
                             "synthetic benchmark's samples (awares-rl data synth); drop eval mode 'grounding'")
        question, crop = locate_question(panels[s.meta["panel"]])
        out.append(EvalItem(dataclasses.replace(s, question=question, answers=(crop,), metric="exact")))
    return out


def _single_turn(engine, processor, items: list[EvalItem], images: list[Image.Image], mode: str,
                 sampling: SamplingConfig, scale: float) -> list[Prediction]:
    tok = processor.tokenizer
    views = [low_res_view(im, scale) if mode == "low" else im for im in images]
    reqs = [GenRequest(vqa_prompt_ids(tok, sample_question(it.sample)), [v]) for it, v in zip(items, views)]
    t0 = time.perf_counter()
    outs = engine.generate(reqs, sampling)
    per_sample = (time.perf_counter() - t0) / len(items)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    full = image_token_counts(processor.image_processor, images)
    return [
        Prediction(it.sample.id, tok.decode(o.token_ids, skip_special_tokens=True).strip(),
                   o.prompt_ids.count(image_id), n_full,
                   retained_token_ratio(im.width, im.height, [], v.size) if mode == "low" else 1.0, per_sample,
                   truncated=o.finish_reason == "length")
        for it, im, v, o, n_full in zip(items, images, views, outs, full)
    ]


def _policy(engine, processor, items: list[EvalItem], images: list[Image.Image],
            sampling: SamplingConfig, settings: EpisodeSettings) -> list[Prediction]:
    runner = EpisodeRunner(engine, processor.tokenizer, settings)
    t0 = time.perf_counter()
    episodes = runner.run([it.sample for it in items], 1, sampling, images=images)
    per_sample = (time.perf_counter() - t0) / len(items)
    full = image_token_counts(processor.image_processor, images)
    preds = []
    for ep, n_full in zip(episodes, full):
        call = f"invalid:{ep.invalid_tool_call}" if ep.invalid_tool_call else "valid" if ep.crop_ids else "none"
        preds.append(Prediction(ep.sample_id, ep.final_answer, ep.visual_tokens, n_full, ep.rtr, per_sample,
                                list(ep.crop_ids), call, truncated=ep.truncated))
    return preds


def _load_batch(batch: list[EvalItem], root: Path, max_pixels: int) -> list[Image.Image | ImageError]:
    """Each item's image, or the ImageError that names its file and problem."""
    out: list[Image.Image | ImageError] = []
    for it in batch:
        try:
            out.append(load_image(root / it.sample.image, max_pixels))
        except ImageError as e:
            out.append(e)
    return out


def run_mode(engine, processor, items: list[EvalItem], root: Path, mode: str, cfg: RecipeConfig,
             desc: str = "eval") -> list[Prediction]:
    """Predictions of ``mode`` for all items, in batches of ``eval.batch_size``, in item order; an
    item whose image cannot be used gets a ``flagged`` prediction and the rest goes on. A progress
    bar ``<desc> <mode>`` counts the samples done."""
    if mode not in MODES:
        raise ValueError(f"unknown eval mode {mode!r}; choose from {MODES}")
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens)
    settings = EpisodeSettings.from_rollout(cfg.rollout, cfg.data.max_image_pixels)
    preds: list[Prediction] = []
    bar = tqdm(total=len(items), desc=f"{desc} {mode}", unit="sample", dynamic_ncols=True)
    for i in range(0, len(items), cfg.eval.batch_size):
        batch = items[i:i + cfg.eval.batch_size]
        loaded = _load_batch(batch, root, cfg.data.max_image_pixels)
        ok = [(it, im) for it, im in zip(batch, loaded) if not isinstance(im, ImageError)]
        got: list[Prediction] = []
        if ok and mode == "policy":
            got = _policy(engine, processor, [it for it, _ in ok], [im for _, im in ok], sampling, settings)
        elif ok:
            view = "full" if mode == "full" else "low"  # grounding asks at low res
            got = _single_turn(engine, processor, [it for it, _ in ok], [im for _, im in ok], view, sampling,
                               cfg.rollout.low_res_scale)
        answered = iter(got)
        preds += [flagged(it.sample.id, f"image: {im}") if isinstance(im, ImageError) else next(answered)
                  for it, im in zip(batch, loaded)]
        bar.update(len(batch))
    bar.close()
    return preds




def score(preds: list[Prediction], items: list[EvalItem], cfg: RecipeConfig) -> None:
    """Set ``score`` and ``correct`` of each prediction (no answer scores 0; ``judge_batch``)."""
    judges = [route_judge(it.sample.metric, cfg.reward.judge) for it in items]
    got, _ = judge_batch([p.answer for p in preds], [it.sample.answers for it in items], judges, cfg.reward)
    for p, s in zip(preds, got, strict=True):
        if p.answer is not None:
            p.score, p.correct = s, cfg.reward.correct(s)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(preds: list[Prediction], items: list[EvalItem], mode: str = "policy") -> dict:
    """Aggregates of one mode (accuracies in percent); tool and crop-decision measures for the policy."""
    by_metric: dict[str, list[bool]] = defaultdict(list)
    for p, it in zip(preds, items):
        by_metric[it.sample.metric or "exact"].append(p.correct)
    asked = [p for p in preds if p.error is None]  # costs of the samples that ran; flagged count as wrong
    out = {
        "n": len(preds),
        "flagged": len(preds) - len(asked),
        "truncated": sum(p.truncated for p in asked),
        "truncated_share": _mean([float(p.truncated) for p in asked]),
        "accuracy": 100 * _mean([float(p.correct) for p in preds]),
        "score": _mean([p.score for p in preds]),
        "by_metric": {m: {"accuracy": 100 * _mean([float(c) for c in v]), "n": len(v)} for m, v in sorted(by_metric.items())},
        "rtr": _mean([p.rtr for p in asked]),
        "visual_tokens": _mean([float(p.visual_tokens) for p in asked]),
        "visual_token_ratio": _mean([p.visual_tokens / max(p.full_visual_tokens, 1) for p in asked]),
        "seconds_per_sample": _mean([p.seconds for p in asked]),
    }
    if mode != "policy":
        return out
    out["crop_rate"] = 100 * _mean([float(bool(p.crop_ids)) for p in asked])
    calls = [p for p in preds if p.tool_call != "none"]
    out["tool_call_validity"] = 100 * _mean([float(p.tool_call == "valid") for p in calls]) if calls else None
    labelled = [(p, it) for p, it in zip(preds, items) if it.needs_crop is not None and p.error is None]
    if labelled:
        out["crop_decision_accuracy"] = 100 * _mean([float(bool(p.crop_ids) == it.needs_crop) for p, it in labelled])
        needed = [(set(p.crop_ids), set(it.crop_ids)) for p, it in labelled if it.needs_crop and it.crop_ids]
        out["crop_jaccard"] = _mean([crop_jaccard(a, b) for a, b in needed]) if needed else None
    return out


def crop_jaccard(policy: set[int], label: set[int]) -> float:
    """|policy & label| / |policy | label| of two crop-id sets; 0 when the policy took no crop."""
    return len(policy & label) / len(policy | label) if policy else 0.0


ROWS = (  # (label, summary key, format)
    ("samples", "n", "d"), ("flagged (unreadable image)", "flagged", "d"),
    ("truncated (eval.max_new_tokens)", "truncated", "d"), ("accuracy %", "accuracy", ".1f"), ("judge score", "score", ".3f"),
    ("RTR (paper)", "rtr", ".3f"), ("visual tokens", "visual_tokens", ".1f"),
    ("visual tokens / full", "visual_token_ratio", ".3f"), ("seconds / sample", "seconds_per_sample", ".3f"),
    ("crop rate %", "crop_rate", ".1f"), ("valid tool calls %", "tool_call_validity", ".1f"),
    ("crop decision acc %", "crop_decision_accuracy", ".1f"), ("crop Jaccard", "crop_jaccard", ".3f"),
)


def results_table(summary: dict[str, dict]) -> Table:
    """One column per mode, one row per measure (and one per metric's accuracy)."""
    table = Table(title="AwaRes evaluation")
    table.add_column("")
    for mode in summary:
        table.add_column(mode, justify="right")

    def add(label: str, values: list, spec: str) -> None:
        table.add_row(label, *("-" if v is None or v != v else format(v, spec) for v in values))

    for label, key, spec in ROWS:
        add(label, [s.get(key) for s in summary.values()], spec)
    metrics = sorted({m for s in summary.values() for m in s["by_metric"]})
    for m in metrics if len(metrics) > 1 else ():
        add(f"accuracy % ({m})", [s["by_metric"].get(m, {}).get("accuracy") for s in summary.values()], ".1f")
    return table


def evaluate(cfg: RecipeConfig, checkpoint: str | Path, data: str | Path,
             trajectories: str | Path | None = None, engine=None) -> dict:
    """Run every mode of ``cfg.eval.modes`` on ``data``; returns {"summary", "samples", ...}.
    ``engine`` (of ``checkpoint``; the caller closes it) saves an engine start when given."""
    from awares_rl.models import load_processor

    items = read_items(data)[: cfg.eval.n or None]
    if not items:
        raise ValueError(f"{data} has no samples")
    if trajectories:
        attach_labels(items, trajectories)
    processor = load_processor(checkpoint, cfg.model)
    owned = engine is None
    engine = engine or make_engine(cfg.rollout, cfg.model, checkpoint, seed=cfg.run.seed)
    summary, samples = {}, {}
    try:
        for mode in cfg.eval.modes:
            asked = grounding_items(items) if mode == "grounding" else items
            preds = run_mode(engine, processor, asked, Path(data).parent, mode, cfg, f"eval {Path(checkpoint).name}:")
            score(preds, asked, cfg)
            summary[mode], samples[mode] = summarize(preds, asked, mode), [dataclasses.asdict(p) for p in preds]
    finally:
        if owned:
            engine.close()
    return {"checkpoint": str(checkpoint), "data": str(data), "engine": type(engine).__name__,
            "batch_size": cfg.eval.batch_size, "summary": summary, "samples": samples}
