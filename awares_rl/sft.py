"""``awares-rl sft``: the AwaRes cold-start SFT on trajectories (ARCHITECTURE.md).

Multi-turn VLM fine-tuning on ``data_pipeline.trajectories`` JSONL: every trajectory is laid out
exactly as the policy will see it at rollout (``learner.batch.trajectory_to_sequence``: the
low-res view, the tool call, the crops, the answer), the loss is the weighted NLL of the
assistant turns only (w = ``sft.tool_turn_weight`` on the GET_CROPS turn, 1 on the answer), and
the step runs on ``learner.num_workers`` data-parallel LearnerWorkers (DeepSpeed or torch) with
gradient accumulation over micro-batches, clipping and a warm-up + cosine LR schedule.

Starts from ``model.path`` or the run's base model; writes resumable checkpoints to
``<run>/checkpoints/sft/step_N`` and the final model to ``RunPaths.model("sft")``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from awares_rl.checkpoint import (
    TrainerState,
    latest_checkpoint,
    prune_checkpoints,
    refuse_fresh_start,
    step_dir,
)
from awares_rl.config import RecipeConfig, load_recipe
from awares_rl.core.config_io import ConfigError
from awares_rl.core.run_paths import RunPaths
from awares_rl.core.trajectory import Trajectory, read_trajectories
from awares_rl.learner.batch import TokenSequence, trajectory_to_sequence
from awares_rl.learner.objective import WeightedNLL
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from awares_rl.sampling import PromptSampler
from awares_rl.tracking import log_step, stage_tracker, truncate_metrics
from cluster.actor_group import ActorGroup, ensure_ray

log = logging.getLogger(__name__)


def trajectory_files(cfg: RecipeConfig) -> tuple[Path, Path | None]:
    """The train and (optional) val trajectory JSONL files of a recipe."""
    paths = RunPaths(cfg.run.dir)
    train = Path(cfg.sft.train_file) if cfg.sft.train_file else paths.trajectories("train")
    val = Path(cfg.sft.val_file) if cfg.sft.val_file else paths.trajectories("val")
    if not train.is_file():
        raise ConfigError(f"sft.train_file: {train} not found; build it with "
                          "`awares-rl data trajectories --split train` or point sft.train_file at one")
    if cfg.sft.val_file and not val.is_file():
        raise ConfigError(f"sft.val_file: {val} not found")
    return train, val if val.is_file() else None


def start_model(cfg: RecipeConfig) -> Path:
    """``model.path`` if set, else the run's base model (``awares-rl pretrain``)."""
    path = Path(cfg.model.path) if cfg.model.path else RunPaths(cfg.run.dir).model("base")
    if not (path / "config.json").is_file():
        raise ConfigError(f"no model at {path}: set model.path, or run `awares-rl pretrain` first")
    return path


def learner_group(cfg: RecipeConfig, model_dir: Path) -> ActorGroup:
    """The data-parallel LearnerWorkers of the recipe, on ``model_dir``."""
    s, lc = cfg.sft, cfg.learner
    optim = OptimSettings(lr=s.lr, total_steps=s.steps, warmup_steps=s.warmup_steps,
                          min_lr_ratio=s.min_lr_ratio, weight_decay=s.weight_decay, grad_clip=s.grad_clip)
    if lc.use_ray:
        ensure_ray()
    return ActorGroup(LearnerWorker, lc.num_workers, str(model_dir), lc, optim, cfg.model, cfg.run.seed,
                      cpus_per_actor=lc.cpus_per_worker, gpus_per_actor=lc.gpus_per_worker,
                      in_process=not lc.use_ray)


class SFTTrainer:
    """Cold-start SFT of one recipe; ``fit()`` trains (resuming if it can) and returns the model dir."""

    def __init__(self, cfg: RecipeConfig) -> None:
        self.cfg, self.paths = cfg, RunPaths(cfg.run.dir)
        self.ckpt_root = self.paths.checkpoints("sft")
        self.out_dir = self.paths.logs("sft")
        train_file, val_file = trajectory_files(cfg)
        self.train, self.train_root = read_trajectories(train_file), train_file.parent
        val = read_trajectories(val_file) if val_file else []
        self.val = val[: cfg.sft.val_samples or None]
        self.val_root = val_file.parent if val_file else None
        self.model_dir = start_model(cfg)
        self.processor = load_processor(self.model_dir)
        workers = cfg.learner.num_workers
        if min(len(self.train), cfg.sft.batch_size) < workers or 0 < len(self.val) < workers:
            raise ConfigError(f"learner.num_workers={workers} needs at least that many trajectories per "
                              f"step (sft.batch_size={cfg.sft.batch_size}), in train ({len(self.train)}) and val")

    def sequences(self, trajs: list[Trajectory], root: Path) -> list[TokenSequence]:
        return [trajectory_to_sequence(self.processor, t.to_json(), self.cfg.sft.tool_turn_weight, root=root,
                                       low_res_scale=self.cfg.rollout.low_res_scale,
                                       max_image_pixels=self.cfg.data.max_image_pixels) for t in trajs]

    def fit(self) -> Path:
        s = self.cfg.sft
        resume = latest_checkpoint(self.ckpt_root) if s.resume else None
        if resume is None:
            refuse_fresh_start(self.paths.metrics("sft"), self.ckpt_root, "sft")
        group = learner_group(self.cfg, resume or self.model_dir)
        state = group.call("load_state", str(resume))[0] if resume else TrainerState()
        truncate_metrics(self.out_dir, state.step)  # rows a killed run logged after its checkpoint
        sampler = PromptSampler(len(self.train), self.cfg.run.seed, **state.extra.get("sampler", {}))
        with self._tracker() as tracker:
            for step in tqdm(range(state.step, s.steps), desc="sft", initial=state.step, total=s.steps):
                batch = [self.train[i] for i in sampler.next(s.batch_size)]
                metrics = group.call_split("sft_step", self.sequences(batch, self.train_root), s.normalize)[0]
                state = TrainerState(step + 1, step + 1, state.samples_seen + len(batch), {"sampler": sampler.state()})
                self._log(tracker, {f"train/{k}": v for k, v in metrics.items()}, step + 1)
                last = step + 1 == s.steps
                if self.val and (last or (s.val_every and (step + 1) % s.val_every == 0)):
                    self._log(tracker, self.validate(group), step + 1)
                if s.save_every and (step + 1) % s.save_every == 0 and not last:
                    group.call("save", str(step_dir(self.ckpt_root, step + 1)), state)
                    prune_checkpoints(self.ckpt_root, s.keep_checkpoints)
        out = self.paths.model("sft")
        group.call("save", str(out), state)
        group.shutdown()
        return out

    def validate(self, group: ActorGroup) -> dict[str, float]:
        """Weighted NLL of the validation trajectories (no step)."""
        seqs = self.sequences(self.val, self.val_root)
        m = group.call_split("eval_loss", seqs, WeightedNLL(self.cfg.sft.normalize))[0]
        return {"val/loss": m["loss"], "val/nll": m["nll_sum"] / max(m["target_tokens"], 1.0)}

    def _tracker(self):
        return stage_tracker(self.cfg, "sft", self.out_dir)

    def _log(self, tracker, metrics: dict[str, float], step: int) -> None:
        log_step(tracker, self.out_dir, metrics, step)


def run_sft(recipe: str, overrides: list[str]) -> Path:
    """Load the recipe and train; returns the SFT model directory."""
    out = SFTTrainer(load_recipe(recipe, overrides)).fit()
    print(f"SFT model written to {out}")
    return out


def add_sft_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``awares-rl sft --recipe R [key=value ...]``."""
    p = subparsers.add_parser("sft", help="cold-start SFT on the run's trajectories (tool-call turn weighted)")
    p.add_argument("--recipe", default="recipes/tiny_cpu.yaml", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.steps=50")
    p.set_defaults(func=_sft_command)
    return p


def _sft_command(args: argparse.Namespace) -> int:
    run_sft(args.recipe, args.overrides)
    return 0
