"""SFT trajectories, built as the paper does (AwaRes, arXiv 2603.16932: "Supervision built automatically"; ARCHITECTURE.md).

1. The base model answers every sample greedily at LOW res (the 0.5 view) and at FULL res (the
   original image), as the plain VQA model it was pretrained as: no tool prompt, the exact prompt
   format of ``awares_rl.pretrain`` (``grounding.vqa_prompt_ids``), the question with its
   benchmark's answer prompt (``awares_rl.core.prompts``) as the policy will be asked it.
2. A judge (``reward.judges``, chosen by the sample's metric) scores both answers against the
   ground truth; a crop is needed iff the low-res answer is wrong and the full-res one right at
   ``reward.correct_threshold`` (``reward.judges.is_correct``).
3. For crop-needed samples, evidence boxes (the dataset's, or a grounding VLM's) map to crop ids
   with ``awares_rl.core.crops.boxes_to_crops`` (``box_rule``); with ``crop_labels="whole-image"`` the
   call asks for the top and bottom halves instead (the same decision, no localisation needed).
4. One trajectory per sample: ``["<answer>"]`` or ``["GET_CROPS: ['0']", "<answer>"]``.

The answer turn is the ground truth ``answers[0]``, not the base model's full-res answer: the
judges pass right-but-differently-worded answers (ANLS, relaxed accuracy, cosine), so the gt keeps
the SFT target canonical; the paper's trajectories use the gt too.

Output, one JSON object a line (``Trajectory.to_json``)::

    {"id", "image" (path relative to the output file's folder), "question", "answers": [...],
     "metric", "split", "needs_crop": bool, "crop_ids": [int, ...], "turns": [str, ...],
     "low_res_answer", "full_res_answer", "low_res_score", "full_res_score",
     "needs_high_res" (the generator's label, or null), "evidence_boxes": [[x1, y1, x2, y2], ...]
     (pixels; the boxes behind crop_ids), "box_source": "dataset" | "vlm" | null, "benchmark",
     "low_res_truncated", "full_res_truncated"}

Beside ``X.jsonl``: ``X.skipped.jsonl`` (``{"id", "reason"}``: unreadable image, or a needed crop
with no evidence box; never trained on), ``X.manifest.json`` (the settings; a rerun with other
settings is refused) and ``X.stats.json`` (the report). Results are appended batch by batch, and a
rerun skips ids already in either file, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from PIL import Image
from tqdm import tqdm

from awares_rl.core.crops import LOW_RES_SCALE, boxes_to_crops, low_res_view
from awares_rl.core.images import DEFAULT_MAX_PIXELS
from awares_rl.core.prompts import benchmark_of, sample_question
from awares_rl.core.protocol import format_tool_call
from awares_rl.core.sample import Sample, iter_jsonl
from awares_rl.core.trajectory import Box, Trajectory, TrajectoryError, read_trajectories
from data_pipeline.grounding import (
    DEFAULT_GROUNDING_PROMPT,
    DatasetBoxes,
    Grounder,
    VLMGrounder,
    ground_many,
    vqa_prompt_ids,
)
from reward.judges import BENCHMARK_JUDGES, CORRECT_THRESHOLD, JUDGES, is_correct, route_judge

log = logging.getLogger(__name__)

JudgeFn = Callable[[list[str], list[list[str]], list[str | None]], list[float]]
# (predictions, references, metrics) -> one score in [0, 1] per prediction


@dataclass(frozen=True)
class TrajectoryConfig:
    """How SFT trajectories are built (``awares-rl data trajectories``)."""

    batch_size: int = 16  # samples per engine call (each asks at low AND at full res)
    box_rule: Literal["smallest-cover", "max-iou"] = "smallest-cover"  # evidence box -> crop id
    # What a crop turn asks for: "evidence" (the paper: the crops covering the evidence boxes) or
    # "whole-image" (the top and bottom halves, i.e. all of the image at full resolution): for a
    # policy that can learn WHEN it needs detail but not WHERE (the tiny model: see README).
    crop_labels: Literal["evidence", "whole-image"] = "evidence"
    max_new_tokens: int = 24  # answer length cap, both resolutions
    vqa_system_prompt: str | None = None  # None: no system message, as pretrain trains the base model
    # metric -> judge for the labels, over the benchmark's own (reward.judges.route_judge); a
    # sample without a metric is judged by reward.judge, as in GRPO and eval
    metric_judges: dict[str, str] = field(default_factory=dict)
    grounder: Literal["auto", "dataset", "vlm"] = "auto"  # auto: the sample's boxes if any, else the VLM
    grounder_model: str | None = None  # grounding VLM dir; None = the base model itself
    box_coords: Literal["resized", "pixels", "norm1000"] = "resized"  # frame of the VLM's boxes
    grounding_prompt: str = DEFAULT_GROUNDING_PROMPT  # uses {question} and {answer}
    grounder_max_new_tokens: int = 64
    MOVED_KEYS: ClassVar[dict[str, str]] = {"correct_threshold": "reward.correct_threshold"}
    num_workers: int = 1  # > 1: Ray actors, each with its own engine (rollout.cpus/gpus_per_worker)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "grounder_max_new_tokens", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"trajectories.{name}={getattr(self, name)} must be >= 1")
        unknown = sorted(set(self.metric_judges) - set(BENCHMARK_JUDGES))
        if unknown:
            raise ValueError(f"trajectories.metric_judges: {unknown[0]!r} is not a sample metric; use keys "
                             f"from {sorted(BENCHMARK_JUDGES)}")
        for metric, name in self.metric_judges.items():
            if name not in JUDGES:
                raise ValueError(f"trajectories judge {name!r} (for {metric}) unknown: use one of {sorted(JUDGES)}")
        try:
            self.grounding_prompt.format(question="q", answer="a")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"trajectories.grounding_prompt may use only {{question}} and {{answer}}: {e!r}") from e

    def judge_for(self, metric: str | None, default: str) -> str:
        """The labels' judge for a sample's metric (``default``: reward.judge); see ``route_judge``."""
        return route_judge(metric, default, self.metric_judges)


WHOLE_IMAGE_CROPS = (5, 6)  # the top and bottom halves of the crop set: together, the whole image


def needs_crop(low_res_score: float, full_res_score: float, threshold: float = CORRECT_THRESHOLD) -> bool:
    """The paper's label: the low-res answer is wrong and the full-res answer is right."""
    return not is_correct(low_res_score, threshold) and is_correct(full_res_score, threshold)




# ---------------------------------------------------------------- judging
def make_judge_fn(cfg: TrajectoryConfig, reward_cfg=None) -> JudgeFn:
    """A batched judge: each sample scored by ``cfg.judge_for(metric, reward_cfg.judge)``, one call per judge.
    ``reward_cfg`` (a ``RewardConfig``) supplies the embedding model and the LLM endpoint."""
    from reward.config import RewardConfig
    from reward.scoring import judge_batch

    reward_cfg = reward_cfg or RewardConfig()

    def judge(predictions: list[str], references: list[list[str]], metrics: list[str | None]) -> list[float]:
        judges = [cfg.judge_for(m, reward_cfg.judge) for m in metrics]
        return judge_batch(predictions, references, judges, reward_cfg)[0]

    return judge


# ---------------------------------------------------------------- building
@dataclass(frozen=True)
class Skipped:
    """A sample that yields no trajectory, and why."""

    id: str
    reason: str


class TrajectoryBuilder:
    """Turns a batch of samples into trajectories with one engine (steps 1-4 of the module doc).

    ``grounder`` serves samples that need a VLM box (``cfg.grounder`` "vlm", or "auto" without
    dataset boxes); None builds a ``VLMGrounder`` on ``engine`` itself when first needed.
    ``low_res_scale`` is the run's ``rollout.low_res_scale``: the view the policy will see;
    ``correct_threshold`` the run's ``reward.correct_threshold``."""

    def __init__(self, engine, tokenizer, judge_fn: JudgeFn, cfg: TrajectoryConfig,
                 grounder: Grounder | None = None, low_res_scale: float = LOW_RES_SCALE,
                 correct_threshold: float = CORRECT_THRESHOLD) -> None:
        self.engine, self.tokenizer, self.judge_fn, self.cfg = engine, tokenizer, judge_fn, cfg
        self.low_res_scale, self.correct_threshold = low_res_scale, correct_threshold
        self.dataset_boxes, self.vlm = DatasetBoxes(), grounder

    def answers(self, images: Sequence[Image.Image], questions: Sequence[str]) -> tuple[list[str], list[bool]]:
        """Greedy plain-VQA answers, one batched engine call, and whether each hit
        ``max_new_tokens`` (it is judged as it stands, and counted in the stats)."""
        from awares_rl.core.engine import GenRequest, SamplingConfig

        reqs = [GenRequest(vqa_prompt_ids(self.tokenizer, q, self.cfg.vqa_system_prompt), [im])
                for im, q in zip(images, questions, strict=True)]
        outs = self.engine.generate(reqs, SamplingConfig(0.0, 1.0, self.cfg.max_new_tokens))
        texts = [self.tokenizer.decode(o.token_ids, skip_special_tokens=True).strip() for o in outs]
        return texts, [o.finish_reason == "length" for o in outs]

    def close(self) -> None:
        """Close the engine and a separate grounding engine (``trajectories.grounder_model``), if any."""
        grounding = getattr(self.vlm, "engine", None)
        for engine in {id(e): e for e in (self.engine, grounding) if e is not None}.values():
            engine.close()

    def _grounder_for(self, sample: Sample) -> Grounder:
        if self.cfg.grounder == "dataset" or (self.cfg.grounder == "auto" and sample.evidence_boxes):
            return self.dataset_boxes
        if self.vlm is None:
            processor = getattr(self.engine, "processor", None)
            self.vlm = VLMGrounder(self.engine, self.tokenizer, self.cfg.box_coords,
                                   getattr(processor, "image_processor", None),
                                   self.cfg.grounding_prompt, self.cfg.grounder_max_new_tokens)
        return self.vlm

    def ground(self, items: Sequence[tuple[Sample, Image.Image]]) -> list[tuple[list[Box], str]]:
        """(boxes, grounder name) per item, one batched call per grounder."""
        groups: dict[int, tuple[Grounder, list[int]]] = {}
        for k, (s, _) in enumerate(items):
            g = self._grounder_for(s)
            groups.setdefault(id(g), (g, []))[1].append(k)
        out: list[tuple[list[Box], str]] = [([], "")] * len(items)
        for g, idx in groups.values():
            sel = [items[k] for k in idx]
            boxes = ground_many(g, [im for _, im in sel], [s.question for s, _ in sel],
                                [s.answers[0] for s, _ in sel], [s for s, _ in sel])
            for k, b in zip(idx, boxes, strict=True):
                out[k] = (list(b), g.name)
        return out

    def process(self, samples: Sequence[Sample], root: str | Path, out_dir: str | Path | None = None,
                split: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Trajectory | Skipped]:
        """One result per sample, in order. ``root``: the samples' JSONL folder; ``out_dir``: the
        folder image paths are made relative to (default ``root``); an image over ``max_pixels``
        (data.max_image_pixels) or unreadable is a Skipped with its reason."""
        from awares_rl.core.images import ImageError, load_image

        root = Path(root)
        results: dict[str, Trajectory | Skipped] = {}
        ok: list[tuple[Sample, Image.Image]] = []
        for s in samples:
            try:
                ok.append((s, load_image(root / s.image, max_pixels)))
            except ImageError as e:
                results[s.id] = Skipped(s.id, f"image: {e}")
        questions = [sample_question(s) for s, _ in ok]
        low, low_cut = self.answers([low_res_view(im, self.low_res_scale) for _, im in ok], questions)
        full, full_cut = self.answers([im for _, im in ok], questions)
        refs, metrics = [list(s.answers) for s, _ in ok], [s.metric for s, _ in ok]
        scores = self.judge_fn(low + full, refs + refs, metrics + metrics) if ok else []
        lows, fulls = scores[: len(ok)], scores[len(ok):]
        need = [k for k in range(len(ok)) if needs_crop(lows[k], fulls[k], self.correct_threshold)]
        grounded = dict(zip(need, self.ground([ok[k] for k in need]), strict=True))
        rel_dir = Path(out_dir) if out_dir is not None else root
        for k, (s, im) in enumerate(ok):
            boxes, source = grounded.get(k, ([], None))
            crops = boxes_to_crops(im.width, im.height, boxes, self.cfg.box_rule) if boxes else []
            if k in grounded and not crops:
                results[s.id] = Skipped(s.id, f"needs a crop, but the {source} grounder gave no evidence box")
                continue
            if crops and self.cfg.crop_labels == "whole-image":
                crops = list(WHOLE_IMAGE_CROPS)
            image = os.path.relpath((root / s.image).resolve(), rel_dir.resolve())
            turns = (format_tool_call(crops), s.answers[0]) if crops else (s.answers[0],)
            results[s.id] = Trajectory(
                s.id, image, s.question, tuple(s.answers), s.metric, split, bool(crops), tuple(crops),
                turns, low[k], full[k], lows[k], fulls[k], s.needs_high_res,
                tuple(tuple(map(float, b)) for b in boxes), source, benchmark_of(s), low_cut[k], full_cut[k],
            )
        return [results[s.id] for s in samples]


def build_trajectories(samples: Sequence[Sample], root: str | Path, engine, tokenizer, judge_fn: JudgeFn,
                       cfg: TrajectoryConfig, out: str | Path | None = None, grounder: Grounder | None = None,
                       split: str | None = None, limit: int | None = None, progress: bool = True,
                       manifest: dict | None = None, low_res_scale: float = LOW_RES_SCALE,
                       correct_threshold: float = CORRECT_THRESHOLD) -> list[Trajectory]:
    """Trajectories of ``samples`` (images under ``root``), in sample order.

    With ``out``, results are appended to ``out`` batch by batch and ids already there (or in its
    ``.skipped.jsonl``) are not redone; ``limit`` caps the NEW samples processed by this call.
    ``manifest`` (e.g. ``{"model": path}``) joins the config in ``out``'s manifest: a rerun with
    other settings raises. Returns every trajectory of ``samples`` done so far (old and new).
    """
    builder = TrajectoryBuilder(engine, tokenizer, judge_fn, cfg, grounder, low_res_scale, correct_threshold)
    out_dir = Path(out).parent if out is not None else None

    def process(batches: list[list[Sample]]) -> Iterator[list[Trajectory | Skipped]]:
        return (builder.process(b, root, out_dir, split) for b in batches)

    return run_batches(samples, cfg, process, out, limit, progress, manifest)


def _paths(out: Path) -> tuple[Path, Path, Path]:
    stem = out.with_suffix("")
    return (stem.with_name(stem.name + ".skipped.jsonl"), stem.with_name(stem.name + ".manifest.json"),
            stem.with_name(stem.name + ".stats.json"))


def _check_manifest(path: Path, cfg: TrajectoryConfig, extra: dict | None) -> None:
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "num_workers")}
    manifest = json.loads(json.dumps({"config": settings, **(extra or {})}))
    if path.exists():
        if json.loads(path.read_text()) != manifest:
            raise TrajectoryError(str(path), "config", "these trajectories were built with other settings "
                                  "(trajectories config, model or data); use a fresh --out, or the same settings to resume")
    else:
        path.write_text(json.dumps(manifest, indent=1))


def _done_ids(out: Path) -> tuple[dict[str, Trajectory], set[str]]:
    """What an earlier run wrote. A bad LAST line is an interrupted write: it is dropped."""
    skipped_path = _paths(out)[0]
    for path in (out, skipped_path):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text and not text.endswith("\n"):
            head, _, last = text.rpartition("\n")
            try:
                json.loads(last)
                path.write_text(text + "\n", encoding="utf-8")
            except json.JSONDecodeError:
                log.warning("%s: dropping a truncated last line (interrupted write)", path)
                path.write_text(head + "\n" if head else "", encoding="utf-8")
    done = {t.id: t for t in read_trajectories(out)} if out.exists() else {}
    skipped = {json.loads(line)["id"] for _, line in iter_jsonl(skipped_path)} if skipped_path.exists() else set()
    return done, skipped


def run_batches(samples: Sequence[Sample], cfg: TrajectoryConfig,
                process: Callable[[list[list[Sample]]], Iterator[list[Trajectory | Skipped]]],
                out: str | Path | None = None, limit: int | None = None, progress: bool = True,
                manifest: dict | None = None) -> list[Trajectory]:
    """The resumable batch loop: ``process`` maps batches to results, in order."""
    done: dict[str, Trajectory] = {}
    skipped: set[str] = set()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_manifest(_paths(out)[1], cfg, manifest)
        done, skipped = _done_ids(out)
    todo = [s for s in samples if s.id not in done and s.id not in skipped]
    already, todo = len(samples) - len(todo), todo[:limit]
    batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    with tqdm(total=already + len(todo), initial=already, desc="trajectories", disable=not progress,
              dynamic_ncols=True) as bar:
        for results in process(batches):
            new = [r for r in results if isinstance(r, Trajectory)]
            if out is not None:
                _append(out, [t.to_line() for t in new])
                _append(_paths(out)[0], [json.dumps(asdict(r)) for r in results if isinstance(r, Skipped)])
            done.update((t.id, t) for t in new)
            bar.update(len(results))
            bar.set_postfix(crops=sum(t.needs_crop for t in done.values()))
    return [done[s.id] for s in samples if s.id in done]


def _append(path: Path, lines: list[str]) -> None:
    if lines:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------- Ray fan-out
class TrajectoryWorker:
    """A Ray actor body: its own engine (and grounding engine) built from the recipe parts."""

    def __init__(self, model_dir: str, rollout, model, cfg: TrajectoryConfig, reward_cfg, seed: int = 0,
                 dist=None) -> None:
        self.builder = make_builder(model_dir, rollout, model, cfg, reward_cfg, seed)

    def process_shard(self, shard: list[list[Sample]], root, out_dir, split,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> list[list[Trajectory | Skipped]]:
        return [self.builder.process(batch, root, out_dir, split, max_pixels) for batch in shard]


def make_builder(model_dir: str | Path, rollout, model, cfg: TrajectoryConfig, reward_cfg, seed: int = 0) -> TrajectoryBuilder:
    """Engine (``rollout.backend``), judge and grounder for ``model_dir`` -> a TrajectoryBuilder."""
    from awares_rl.models import load_processor
    from awares_rl.rollout import make_engine

    engine = make_engine(rollout, model, model_dir, seed=seed)
    grounder = None
    if cfg.grounder != "dataset":
        gdir = cfg.grounder_model or model_dir
        gengine = engine if cfg.grounder_model is None else make_engine(rollout, model, gdir, seed=seed)
        processor = load_processor(gdir, model)
        grounder = VLMGrounder(gengine, processor.tokenizer, cfg.box_coords, processor.image_processor,
                               cfg.grounding_prompt, cfg.grounder_max_new_tokens)
    threshold = reward_cfg.correct_threshold if reward_cfg is not None else CORRECT_THRESHOLD
    return TrajectoryBuilder(engine, engine_tokenizer(engine), make_judge_fn(cfg, reward_cfg), cfg, grounder,
                             low_res_scale=rollout.low_res_scale, correct_threshold=threshold)


def engine_tokenizer(engine):
    """The tokenizer of an HFEngine (its processor's) or a VLLMEngine."""
    return engine.processor.tokenizer if hasattr(engine, "processor") else engine.tokenizer


def fan_out(group, num_workers: int, batches: list[list[Sample]], root, out_dir,
            split, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[Trajectory | Skipped]]:
    """Rounds of ``num_workers`` batches on an ``ActorGroup`` of TrajectoryWorkers, one batch per
    actor (an idle actor gets an empty one); results in batch order, so the file is the same."""
    for i in range(0, len(batches), num_workers):
        round_ = batches[i:i + num_workers]
        padded = round_ + [[]] * (num_workers - len(round_))
        shards = group.call_split("process_shard", padded, root, out_dir, split, max_pixels)
        yield from (r for shard in shards for r in shard)


def ray_process(worker_args: tuple, num_workers: int, rollout, root, out_dir, split,
                max_pixels: int = DEFAULT_MAX_PIXELS):
    """A ``process`` for ``run_batches`` that starts the actors (Ray) and fans batches out."""
    import ray

    from cluster.actor_group import ActorGroup, init_local_ray
    from cluster.resources import Bundle, check_resources

    def process(batches: list[list[Sample]]) -> Iterator[list[Trajectory | Skipped]]:
        if not ray.is_initialized():
            init_local_ray(include_dashboard=False, log_to_driver=False)
        check_resources([Bundle("trajectory worker", num_workers, rollout.cpus_per_worker, rollout.gpus_per_worker,
                                  "trajectories.num_workers, rollout.cpus_per_worker, rollout.gpus_per_worker")])
        group = ActorGroup(TrajectoryWorker, num_workers, *worker_args,
                           cpus_per_actor=rollout.cpus_per_worker, gpus_per_actor=rollout.gpus_per_worker)
        try:
            yield from fan_out(group, num_workers, batches, root, out_dir, split, max_pixels)
        finally:
            group.shutdown()

    return process
