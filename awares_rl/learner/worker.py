"""LearnerWorker: one data-parallel training worker (a Ray actor, or an object in the driver).

    group = ActorGroup(LearnerWorker, cfg.learner.num_workers, model_dir, cfg.learner, optim,
                       cfg.model, seed, cpus_per_actor=..., gpus_per_actor=...)
    metrics = group.call_split("sft_step", sequences)[0]     # one optimizer step, any split
    weights = group.call("named_weights")[0]                  # rank 0 returns them
    group.call("save", ckpt_dir, state)

Every step's loss is normalised over the GLOBAL batch (``objective.py``), so N workers with
micro-batches of any size take the same step as one worker on the whole batch. All ranks run
the same number of forward/backward passes (ZeRO's collectives need it): a worker with fewer
micro-batches repeats its last one with the loss scaled by 0. Metrics are all-reduced, so every
rank returns the same dict.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from awares_rl import checkpoint as ckpt_io
from awares_rl.learner.backends import (
    DeepSpeedBackend,
    TorchBackend,
    deepspeed_config,
    freeze_vision,
)
from awares_rl.learner.batch import PixelCache, TokenSequence, batch_order, collate_sequences
from awares_rl.learner.config import LearnerConfig
from awares_rl.learner.fast_vision import fast_vision
from awares_rl.learner.forward import sequence_logprobs
from awares_rl.learner.objective import Objective, WeightedNLL
from awares_rl.learner.sync import WeightUpdate, publish
from awares_rl.models import load_policy, load_processor
from awares_rl.models.config import ModelConfig
from cluster.actor_group import DistInfo
from cluster.resources import torch_threads

SCHEDULER_FILE = "scheduler.json"  # in trainer_state/


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and its LR schedule for one training stage."""

    lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # on matrices only
    grad_clip: float = 1.0  # 0 = no clipping
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio`` at ``total``."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@contextlib.contextmanager
def torch_threads_within(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (None: left as it is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices; none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


class LearnerWorker:
    """Holds the policy, its optimizer and LR schedule on one data-parallel rank."""

    def __init__(self, model_path: str, learner: LearnerConfig, optim: OptimSettings,
                 model: ModelConfig | None = None, seed: int = 0, dist: DistInfo | None = None) -> None:
        self.dist, self.cfg = dist or DistInfo(), learner
        self.dist.export()
        torch.manual_seed(seed)
        on_gpu = learner.gpus_per_worker > 0 and torch.cuda.is_available()
        if not on_gpu:
            torch.set_num_threads(torch_threads(learner.threads, learner.cpus_per_worker))
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        model = model or ModelConfig()
        self.processor = load_processor(model_path, model)
        policy = load_policy(model_path, model.dtype, model.attn_implementation).to(self.device)
        if learner.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        if learner.freeze_vision:
            freeze_vision(policy)
        optimizer = torch.optim.AdamW(param_groups(policy, optim.weight_decay), lr=optim.lr,
                                      betas=optim.betas, eps=optim.eps)
        if learner.backend == "deepspeed":
            config = deepspeed_config(learner.zero_stage, learner.micro_batch_size, optim.grad_clip,
                                      bf16=model.dtype == "bfloat16")
            self.backend: TorchBackend | DeepSpeedBackend = DeepSpeedBackend(policy, optimizer, config, on_gpu)
        else:
            self.backend = TorchBackend(policy, optimizer, optim.grad_clip, self.dist.world_size,
                                        "nccl" if on_gpu else "gloo")
        self.optimizer = optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(optim.warmup_steps, optim.total_steps, optim.min_lr_ratio))
        self.step_count = 0
        self.pixel_cache = PixelCache()  # a step's passes over the same episodes process each image once

    # ------------------------------------------------------------------ helpers
    @property
    def model(self):
        return self.backend.module

    @property
    def _zero3(self) -> bool:
        return self.cfg.backend == "deepspeed" and self.cfg.zero_stage == 3

    def _vision_speedups(self):
        """On CPU, the vision tower's batched window attention and linear patch embedding for the
        block (``fast_vision``: same math, fewer kernel calls); on GPU the configured attention.
        Not under ZeRO-3: its parameters are gathered by each module's own forward hooks, and the
        linear patch embedding reads ``proj.weight`` without calling ``proj``."""
        return fast_vision(self.model) if self.device.type == "cpu" and not self._zero3 else contextlib.nullcontext()

    @property
    def _share_prefix(self) -> bool:
        """``learner.share_prefix`` where it applies: not under gradient checkpointing (its layers
        drop the KV cache the continuation reads) nor ZeRO-3 (parameters gathered per call)."""
        return self.cfg.share_prefix and not self.cfg.gradient_checkpointing and not self._zero3

    def _micro_batches(self, sequences: Sequence[TokenSequence]) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
        """Collated on the CPU in ``batch_order`` (returned: sequence indices in batch order), each
        distinct image once per micro-batch; ``_aligned`` moves one at a time to the device."""
        n, order = self.cfg.micro_batch_size, batch_order(sequences)
        ordered = [sequences[i] for i in order]
        return [collate_sequences(ordered[i:i + n], self.processor, dedupe_images=True, cache=self.pixel_cache)
                for i in range(0, len(ordered), n)], order

    def _all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        if self.dist.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def _aligned(self, batches: list[dict]) -> Iterator[tuple[dict, bool]]:
        """(micro-batch, is_real): every rank yields the same number of micro-batches."""
        if not batches:
            raise ValueError(f"rank {self.dist.rank} got no sequences; give each worker at least one")
        count = int(self._all_reduce([len(batches)], op="max")[0])
        for i in range(count):
            batch = batches[min(i, len(batches) - 1)]
            yield {k: v.to(self.device) for k, v in batch.items()}, i < len(batches)

    def _run(self, sequences: Sequence[TokenSequence], objective: Objective, train: bool) -> dict[str, float]:
        """Forward (and backward when ``train``) over all micro-batches; global sums of stats."""
        batches, _ = self._micro_batches(sequences)
        denom = self._all_reduce([sum(objective.denominator(b) for b in batches)])[0]
        scale = self.dist.world_size / denom if denom > 0 else 0.0
        sums: dict[str, float] = defaultdict(float)
        self.model.train(train)
        with torch.set_grad_enabled(train), self._vision_speedups():
            for batch, real in self._aligned(batches):
                logprobs = sequence_logprobs(self.backend.forward_model, batch, objective.targets(batch),
                                             share_prefix=self._share_prefix)
                loss_sum, stats = objective(logprobs, batch)
                if train:
                    self.backend.backward(loss_sum * (scale if real else 0.0))
                if real:
                    sums["loss_sum"] += float(loss_sum.detach())
                    sums["tokens"] += float(batch["attention_mask"].sum())
                    for k, v in stats.items():
                        sums[k] += v
        keys = sorted(sums)
        totals = dict(zip(keys, self._all_reduce([sums[k] for k in keys])))
        totals["sequences"] = self._all_reduce([len(sequences)])[0]
        totals["denominator"] = denom
        totals["loss"] = totals["loss_sum"] / denom if denom > 0 else 0.0
        return totals

    # ------------------------------------------------------------------ training
    def train_step(self, sequences: Sequence[TokenSequence], objective: Objective) -> dict[str, float]:
        """One optimizer step on this rank's share of the batch; returns global metrics:
        loss, grad_norm, lr (of this step), sequences, tokens, the objective's stats, step_s."""
        t0 = time.perf_counter()
        metrics = self._run(sequences, objective, train=True)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["grad_norm"] = self.backend.step()
        self.scheduler.step()
        self.step_count += 1
        metrics["step"] = self.step_count
        metrics["step_s"] = time.perf_counter() - t0
        return metrics

    def sft_step(self, sequences: Sequence[TokenSequence], normalize: str = "weights") -> dict[str, float]:
        """A weighted-NLL step (cold-start SFT); ``nll`` = unweighted mean NLL of the targets."""
        metrics = self.train_step(sequences, WeightedNLL(normalize))
        metrics["nll"] = metrics["nll_sum"] / max(metrics["target_tokens"], 1.0)
        return metrics

    @torch.no_grad()
    def eval_loss(self, sequences: Sequence[TokenSequence], objective: Objective) -> dict[str, float]:
        """The objective over this rank's sequences without a step; global sums and ``loss``."""
        return self._run(sequences, objective, train=False)

    @torch.no_grad()
    def eval_logprobs(self, sequences: Sequence[TokenSequence], threads: int | None = None) -> list[list[float]]:
        """Per sequence, logprobs aligned with ``token_ids`` (entry i = log p(token i | before));
        computed where ``loss_weights`` != 0, 0.0 elsewhere (and at i = 0). ``threads``: torch
        threads for this call only (CPU; e.g. 1 while another actor scores on the other core)."""
        self.model.eval()
        (batches, order), out = self._micro_batches(sequences), []
        with self._vision_speedups(), torch_threads_within(threads if self.device.type == "cpu" else None):
            for batch, real in self._aligned(batches):
                lp = sequence_logprobs(self.backend.forward_model, batch, batch["loss_weights"][:, 1:] != 0,
                                       share_prefix=self._share_prefix)
                if real:
                    lengths = batch["attention_mask"].sum(1).tolist()
                    out += [[0.0] + row[: n - 1] for row, n in zip(lp.cpu().tolist(), lengths)]
        return [out[j] for j in sorted(range(len(order)), key=order.__getitem__)]  # back to input order

    # ------------------------------------------------------------------ weights and state
    def named_weights(self, trainable_only: bool = True) -> list[tuple[str, torch.Tensor]]:
        """(name, CPU tensor copy) in transformers checkpoint naming (``model.layers.*``, ``visual.*``,
        ``lm_head.weight``: what save_pretrained writes and vLLM's reload_weights accepts).
        Rank 0 returns them; other ranks return [] (with ZeRO-3 all ranks must call)."""
        return [(n, t.cpu().clone()) for n, t in self._weights(trainable_only)]

    def publish_weights(self, version: int, bucket_mb: float | None = None) -> WeightUpdate | None:
        """The trainable weights (``named_weights``) put into the object store by this actor in
        buckets of about ``bucket_mb`` (default ``learner.sync_bucket_mb``) MB; rank 0 returns the
        WeightUpdate, other ranks None (with ZeRO-3 all ranks must call). See learner/sync.py."""
        named = self._weights(trainable_only=True)
        if self.dist.rank != 0:
            return None
        return publish(named, version, bucket_mb or self.cfg.sync_bucket_mb)

    def _weights(self, trainable_only: bool) -> list[tuple[str, torch.Tensor]]:
        """(checkpoint name, tensor: the live parameter or the gathered ZeRO-3 copy), sorted by
        name; [] off rank 0."""
        full = self.backend.full_state_dict()
        if self.dist.rank != 0:
            return []
        params = dict(self.model.named_parameters())
        names = [n for n, p in params.items() if p.requires_grad or not trainable_only]
        source = full if full is not None else {n: p.detach() for n, p in params.items()}
        return sorted(ckpt_io.checkpoint_names(self.model, {n: source[n] for n in names}).items())

    def save(self, ckpt_dir: str, state: ckpt_io.TrainerState) -> None:
        """A loadable model dir + ``trainer_state/`` (all ranks must call)."""
        state_dir = ckpt_io.state_dir(ckpt_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.rank == 0:
            ckpt_io.mark_incomplete(ckpt_dir)  # a save that dies half-way must not look complete
        full = self.backend.full_state_dict()
        if self.dist.rank == 0:
            ckpt_io.save_model_dir(ckpt_dir, self.model, self.processor, full)
            # LambdaLR's state_dict is plain numbers, WarmupCosine's fields included: JSON as-is
            (state_dir / SCHEDULER_FILE).write_text(json.dumps(self.scheduler.state_dict(), indent=1))
        self.backend.save(state_dir, self.dist.rank)
        ckpt_io.save_rng(ckpt_dir, self.dist.rank)
        self._barrier()
        if self.dist.rank == 0:
            ckpt_io.write_state(ckpt_dir, state)
        self._barrier()

    def load_state(self, ckpt_dir: str) -> ckpt_io.TrainerState:
        """Restore weights, optimizer, LR schedule and RNG from ``ckpt_dir`` (DeepSpeed: from its
        own checkpoint, fp32 master weights included); returns the saved TrainerState."""
        ckpt_io.refuse_legacy_state(ckpt_dir)
        state = ckpt_io.read_state(ckpt_dir)
        state_dir = ckpt_io.state_dir(ckpt_dir)
        self.backend.load(state_dir)
        self.scheduler.load_state_dict(ckpt_io.read_json(state_dir / SCHEDULER_FILE, self.scheduler.state_dict()))
        ckpt_io.load_rng(ckpt_dir, self.dist.rank)
        self.step_count = self.scheduler.last_epoch  # optimizer steps (GRPO: several per state.step)
        return state

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()

    def ping(self) -> int:
        """The rank (a cheap call to wait for actors to be up)."""
        return self.dist.rank
