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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tqdm import tqdm

from awares_rl.checkpoint import (
    TrainerState,
    latest_checkpoint,
    prune_checkpoints,
    refuse_fresh_start,
    step_dir,
)
from awares_rl.core.config_io import ConfigError, require
from awares_rl.core.run_paths import RunPaths
from awares_rl.core.trajectory import Trajectory, read_trajectories
from awares_rl.learner.batch import TokenSequence, trajectory_to_sequence
from awares_rl.learner.config import check_training
from awares_rl.learner.objective import WeightedNLL
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.models import load_processor
from awares_rl.sampling import PromptSampler
from awares_rl.tracking import log_step, stage_tracker, truncate_metrics
from awares_rl.workspace import base_model
from cluster.actor_group import ActorGroup, ensure_ray
from cluster.resources import check_resources, recipe_resources

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SFTConfig:
    train_file: str | None = None  # trajectory JSONL; None = run_dir/trajectories/train.jsonl
    val_file: str | None = None  # None = run_dir/trajectories/val.jsonl (validation skipped if absent)
    steps: int = 200  # optimizer steps (the data is reshuffled each epoch)
    batch_size: int = 16  # trajectories per step, across all workers
    lr: float = 1e-4  # peak AdamW lr (linear warm-up, cosine decay to min_lr_ratio * lr)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # on matrices only (not norms, biases)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    tool_turn_weight: float = 5.0  # the paper's w on the GET_CROPS turn; answer turns get 1
    normalize: Literal["weights", "tokens"] = "weights"  # loss / sum of weights, or / target tokens
    val_every: int = 50  # steps between validation losses (0: only at the end)
    val_samples: int = 64  # validation trajectories scored (0: all)
    save_every: int = 0  # steps between resumable checkpoints (0: only the final model)
    keep_checkpoints: int = 2  # resumable checkpoints kept
    resume: bool = True  # continue from the newest complete checkpoint of this run

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("sft.steps and sft.batch_size must be >= 1")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("sft.lr must be > 0, sft.warmup_steps >= 0, sft.min_lr_ratio in [0, 1]")
        if self.tool_turn_weight <= 0:
            raise ValueError(f"sft.tool_turn_weight must be > 0 (the paper uses 5), got {self.tool_turn_weight}")
        check_training("sft", self.lr, self.grad_clip, self.save_every, self.keep_checkpoints)
        require(self.weight_decay >= 0, "sft.weight_decay", self.weight_decay, ">= 0")
        for name in ("val_every", "val_samples"):
            require(getattr(self, name) >= 0, f"sft.{name}", getattr(self, name), ">= 0 (0: see its comment)")



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


def learner_group(cfg: RecipeConfig, model_dir: Path) -> ActorGroup:
    """The data-parallel LearnerWorkers of the recipe, on ``model_dir``."""
    s, lc = cfg.sft, cfg.learner
    optim = OptimSettings(lr=s.lr, total_steps=s.steps, warmup_steps=s.warmup_steps,
                          min_lr_ratio=s.min_lr_ratio, weight_decay=s.weight_decay, grad_clip=s.grad_clip)
    if lc.use_ray:
        ensure_ray()
        check_resources(recipe_resources(cfg).stages["sft"])  # before placement, which would wait forever
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
        self.model_dir = base_model(cfg)
        self.processor = load_processor(self.model_dir, cfg.model)
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
