"""Multi-turn GRPO: rollout workers -> reward service -> learner update -> weight sync.

The driver holds no model. Each step draws ``prompts_per_step`` samples, has the rollout workers
run ``rollout.group_size`` 2-turn episodes for each, scores them with the reward pool, turns the
rewards into group-relative advantages, runs the learner update (``ppo_epochs`` passes over the
batch in ``mini_batches`` optimizer steps each, PPO-clipped against the learner's own logprobs
before the first), and pushes the new weights to every rollout worker (versioned: each Episode
records the policy version that produced it).

With ``grpo.async_rollout`` the next step's episodes are collected (rollout and reward, in a driver
thread: ``prefetch.Ahead``) while the learner trains this step, on the weights this step started
from: one step off-policy, each Episode's ``policy_lag`` 1 and the truncated importance weight
(``grpo.tis_cap``) correcting for it. A checkpoint step drains the pipeline (nothing runs ahead
of a checkpoint), so the step after it rolls out on the saved weights and a resumed run repeats
the uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import ray
import torch
from tqdm import tqdm

from awares_rl.algo import group_advantages, informative_groups
from awares_rl.checkpoint import (
    TrainerState,
    latest_checkpoint,
    prune_checkpoints,
    refuse_fresh_start,
    step_dir,
)
from awares_rl.core.config_io import require
from awares_rl.core.episode import Episode
from awares_rl.core.run_paths import RunPaths
from awares_rl.core.sample import Sample
from awares_rl.core.trajectory import label_needs_high_res, read_trajectories
from awares_rl.learner.batch import TokenSequence, episode_to_sequence
from awares_rl.learner.config import check_training
from awares_rl.learner.ppo import PPOClip, pool_steps
from awares_rl.learner.worker import LearnerWorker, OptimSettings
from awares_rl.prefetch import Ahead
from awares_rl.rollout.control import ScaleChannel
from awares_rl.rollout.pool import RolloutPool, StepReport
from awares_rl.sampling import PromptSampler, sampling_seed
from awares_rl.tracking import episode_metrics, log_step, stage_tracker, truncate_metrics
from awares_rl.workspace import ensure_data
from cluster.actor_group import ActorGroup, ensure_ray, init_local_ray, log_to_driver, split_evenly
from cluster.resources import Bundle, check_resources, concurrent_threads, recipe_resources, totals
from data_pipeline.datasets import read_samples
from reward.remote import make_scorer

if TYPE_CHECKING:
    from awares_rl.config import RecipeConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GRPOConfig:
    """Multi-turn GRPO (awares_rl.grpo): PPO-clip on group-relative advantages."""

    steps: int = 30  # GRPO steps: one rollout batch each, ppo_epochs * mini_batches optimizer steps on it
    prompts_per_step: int = 8  # N prompts; N * G episodes a step
    mini_batches: int = 1  # a step's sequences split into this many mini-batches, one optimizer step each
    ppo_epochs: int = 1  # passes over a step's sequences (> 1 or mini_batches > 1: the PPO ratio moves off 1)
    lr: float = 2e-5
    warmup_steps: int = 0  # in GRPO steps (the schedule runs over optimizer steps: times epochs x mini-batches)
    clip_low: float = 0.2  # PPO ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.28
    kl_coef: float = 0.0  # beta * KL(pi || pi_ref) in the loss (0: no reference model needed)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    agg: Literal["token-mean", "seq-mean-token-mean", "dr-grpo"] = "token-mean"
    max_len: int | None = None  # dr-grpo's constant normaliser; None = 2 * rollout.max_new_tokens (2 turns)
    adv_scale: Literal["group", "none"] = "group"  # none = Dr.GRPO (no std normalisation)
    tis_cap: float | None = 2.0  # truncated importance weight between rollout and learner logprobs
    grad_clip: float = 1.0
    save_every: int = 10  # resumable checkpoint every N steps (0: only the final model)
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the newest complete checkpoint of this run
    log_tables_every: int = 10  # an episode table (images with crop boxes) every N steps
    # DAPO's dynamic sampling: a step trains on prompts_per_step groups that are neither all right
    # nor all wrong, drawing up to sampling_rounds batches of prompts to find them; short of that,
    # the other groups fill the batch in draw order
    dynamic_sampling: bool = False
    sampling_rounds: int = 4
    # one-step off-policy: step t+1's rollouts (on step t's starting weights) run while the
    # learner trains step t; a checkpoint step drains it (exact resume)
    async_rollout: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError("grpo.steps and grpo.prompts_per_step must be >= 1")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(f"grpo.clip_low must be in [0, 1) and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0:
            raise ValueError(f"grpo.kl_coef must be >= 0, got {self.kl_coef}")
        if self.mini_batches < 1 or self.ppo_epochs < 1:
            raise ValueError(f"grpo.mini_batches and grpo.ppo_epochs must be >= 1 (1 and 1: one optimizer step "
                             f"per rollout batch), got {self.mini_batches}, {self.ppo_epochs}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"grpo.max_len must be a positive token count, or null for 2 * rollout.max_new_tokens; "
                             f"got {self.max_len}")
        check_training("grpo", self.lr, self.grad_clip, self.save_every, self.keep_checkpoints)
        require(self.warmup_steps >= 0, "grpo.warmup_steps", self.warmup_steps, ">= 0")
        require(self.tis_cap is None or self.tis_cap >= 1, "grpo.tis_cap", self.tis_cap,
                ">= 1, or null for no importance weight")
        require(self.log_tables_every >= 0, "grpo.log_tables_every", self.log_tables_every, ">= 0 (0: never)")
        require(1 <= self.sampling_rounds <= 64, "grpo.sampling_rounds", self.sampling_rounds,
                "in [1, 64] (prompt batches drawn a step at most with grpo.dynamic_sampling)")



class StageTimer:
    """Wall time per named stage of a step (rollout, reward, learner, sync)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def episode_advantages(episodes: list[Episode], group_size: int, scale: str) -> torch.Tensor:
    """Group-relative advantages of the episodes' total rewards (group-contiguous layout).

    An episode that could not run (``error``) has reward 0 and is dropped from the loss by the
    learner (its sequence is empty); it still counts in its group's statistics, so a broken image
    cannot silently reshape the other episodes' advantages.
    """
    rewards = torch.tensor([ep.reward.total if ep.reward else 0.0 for ep in episodes])
    return group_advantages(rewards, group_size, scale=scale)


def select_groups(episodes: list[Episode], group_size: int, want: int, kept: list[list[Episode]],
                  rest: list[list[Episode]], value) -> bool:
    """Deal ``episodes`` (scored, group-contiguous) into ``kept`` (groups whose ``value(ep)``
    differ: DAPO keeps the groups whose accuracy is neither 0 nor 1) and ``rest``; True once
    ``kept`` holds ``want`` groups."""
    groups = [episodes[i:i + group_size] for i in range(0, len(episodes), group_size)]
    values = torch.tensor([float(value(ep)) for ep in episodes])
    for group, useful in zip(groups, informative_groups(values, group_size), strict=True):
        (kept if useful else rest).append(group)
    return len(kept) >= want


def minibatch_indices(n: int, mini_batches: int, epochs: int, seed: int,
                      groups: Sequence[Hashable] | None = None) -> list[list[int]]:
    """Which of a step's ``n`` sequences each of its ``epochs * mini_batches`` optimizer steps takes.

    Each pass is a permutation of range(n) seeded by ``seed`` (the rollout order when
    ``mini_batches`` is 1), cut into ``mini_batches`` contiguous parts whose sizes differ by at
    most one. With ``groups`` (a key per sequence: its GRPO group, e.g. the sample id) the
    permutation moves whole groups, each kept together in rollout order, so that a part holds
    whole groups wherever the sizes allow: the learner runs a group's shared prompt once
    (``learner.share_prefix``), and a group split over two parts runs it twice, each time for
    fewer rows. It depends on the arguments only, so a resumed run takes exactly the same steps.
    """
    if groups is not None and len(groups) != n:
        raise ValueError(f"minibatch_indices: {len(groups)} group keys for {n} sequences")
    members: dict[Hashable, list[int]] = {}
    for i in range(n):
        members.setdefault(groups[i] if groups is not None else i, []).append(i)
    units = list(members.values())
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = []
    for _ in range(epochs):
        order = torch.randperm(len(units), generator=gen).tolist() if mini_batches > 1 else range(len(units))
        parts += split_evenly([i for u in order for i in units[u]], mini_batches)
    return parts


def needs_old_logprobs(parts: list[list[int]], epochs: int) -> list[int]:
    """Which sequences need ``old_logprobs`` scored before the update, given the optimizer steps'
    ``parts`` (``minibatch_indices``): all of them with several epochs; with one, all but the
    first step's, which runs on the very weights pi_old would be scored with, so its detached
    logprobs are pi_old (ratio 1, as for a single step) and that part of the pass is saved."""
    if len(parts) < 2:  # one optimizer step: no update before any part
        return []
    first = set() if epochs > 1 else set(parts[0])  # with more epochs the first part comes back later
    return sorted({i for part in parts for i in part} - first)


def attach_scored(seqs: list[TokenSequence], key: str, parts: list[list[list[float]]]) -> None:
    """Set ``seq.<key>`` (``ref_logprobs`` / ``old_logprobs``) of every sequence to its logprobs
    from ``parts``: a scorer group's ``eval_logprobs`` results, the sequences split across its
    workers in order (``ActorGroup.submit_split``)."""
    scored = [lp for part in parts for lp in part]
    for seq, lp in zip(seqs, scored, strict=True):
        setattr(seq, key, lp)


def attach_logprobs(seqs: list[TokenSequence], key: str, scorer: ActorGroup) -> None:
    """``attach_scored`` with ``scorer``'s ``eval_logprobs`` of ``seqs``, waited for here."""
    attach_scored(seqs, key, scorer.call_split("eval_logprobs", seqs))


def grpo_asks(cfg: RecipeConfig) -> list[Bundle]:
    """The Ray actors a GRPO run creates (``recipe_resources``' grpo stage): learners (unless in the
    driver), rollout workers, reward actors and, with a KL term, the reference scorer."""
    return recipe_resources(cfg).stages["grpo"]


def grpo_cpus(cfg: RecipeConfig) -> float:
    """Logical CPUs a GRPO run's actors reserve (``grpo_asks``)."""
    return totals(grpo_asks(cfg))["CPU"]


def start_local_ray(cpus_needed: float) -> None:
    """Start a local Ray sized for the recipe's actors (logical CPUs may exceed the cores: on a
    laptop rollout, reward and learner take turns); with RAY_ADDRESS set, join that cluster."""
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        init_local_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)), include_dashboard=False,
                       log_to_driver=log_to_driver())
    ensure_ray()


def train_samples(train_file: Path, crop_labels: Path) -> list[Sample]:
    """GRPO's samples: ``train_file``'s, each unknown ``needs_high_res`` taken from the trajectory
    labels in ``crop_labels`` when that file exists (``label_needs_high_res``); the samples that
    stay unknown are logged: alpha_miss is never charged on them."""
    samples = read_samples(train_file)[0]
    if crop_labels.is_file():
        samples, n = label_needs_high_res(samples, read_trajectories(crop_labels))
        log.info("needs_high_res of %d samples from the trajectory labels in %s", n, crop_labels)
    unknown = sum(s.needs_high_res is None for s in samples)
    if unknown:
        log.warning("%d of %d GRPO samples have no needs_high_res (none in %s, no trajectory label in %s): "
                    "reward.alpha_miss is never charged on them; build the train trajectories first",
                    unknown, len(samples), train_file, crop_labels)
    return samples


class GRPOTrainer:
    """Multi-turn GRPO of one recipe; ``fit()`` trains (resuming if it can), returns the model dir."""

    def __init__(self, cfg: RecipeConfig, start_model: Path | None = None, crop_labels: Path | None = None) -> None:
        """``crop_labels``: the trajectory JSONL whose ``needs_crop`` fills the samples' unknown
        ``needs_high_res`` (default: the run's train trajectories, when there are any)."""
        self.cfg, self.paths = cfg, RunPaths(cfg.run.dir)
        self.ckpt_root = self.paths.checkpoints("grpo")
        self.out_dir = self.paths.logs("grpo")
        self.start_model = start_model or self.paths.model("sft")
        train_file = ensure_data(cfg, "train")
        self.root = train_file.parent
        self.samples = train_samples(train_file, crop_labels or self.paths.trajectories("train"))
        g, per_step = cfg.grpo, cfg.grpo.prompts_per_step * cfg.rollout.group_size
        if per_step < g.mini_batches * cfg.learner.num_workers:
            raise ValueError(
                f"grpo.mini_batches={g.mini_batches} x learner.num_workers={cfg.learner.num_workers} needs at least "
                f"that many episodes a step, got {per_step}: lower grpo.mini_batches or raise grpo.prompts_per_step")
        if g.async_rollout and -1 in (cfg.learner.threads, cfg.rollout.threads):
            log.warning("grpo.async_rollout runs rollout and learner at once, but learner.threads / rollout.threads = -1 "
                        "gives each all %d cores: oversubscribed. Set them to 0 (each stage its cpus_per_worker)",
                        os.cpu_count() or 1)
        max_len = g.max_len or 2 * cfg.rollout.max_new_tokens  # the most action tokens of a 2-turn episode
        self.objective = PPOClip(g.clip_low, g.clip_high, g.agg, max_len, g.kl_coef, g.kl_kind, g.tis_cap)

    def _groups(self, model_dir):
        cfg, g, lc, rc = self.cfg, self.cfg.grpo, self.cfg.learner, self.cfg.rollout
        start_local_ray(grpo_cpus(cfg))
        check_resources(grpo_asks(cfg))  # before placement, which would wait forever
        per_batch = g.ppo_epochs * g.mini_batches  # optimizer steps per GRPO step
        optim = OptimSettings(lr=g.lr, total_steps=g.steps * per_batch, warmup_steps=g.warmup_steps * per_batch,
                              min_lr_ratio=1.0, grad_clip=g.grad_clip)
        learner = ActorGroup(LearnerWorker, lc.num_workers, str(model_dir), lc, optim, cfg.model, cfg.run.seed,
                             cpus_per_actor=lc.cpus_per_worker, gpus_per_actor=lc.gpus_per_worker,
                             in_process=not lc.use_ray)
        rollout = RolloutPool(rc, cfg.model, str(model_dir), cfg.run.seed, max_image_pixels=cfg.data.max_image_pixels)
        reference = None
        if g.kl_coef > 0:  # the frozen start (SFT) policy, scored by a learner that never steps
            reference = ActorGroup(LearnerWorker, 1, str(self.start_model), replace(lc, backend="torch", num_workers=1),
                                   optim, cfg.model, cfg.run.seed, cpus_per_actor=lc.cpus_per_worker,
                                   gpus_per_actor=lc.gpus_per_worker, in_process=not lc.use_ray)
        return learner, rollout, reference

    def rollout_step(self, samples: list, step: int, start: int = 0) -> tuple[list[Episode], StepReport]:
        """Samples split across the rollout pool's workers; G episodes each, group-contiguous (a
        lost worker's share re-issued with its seeds: ``RolloutPool.rollout``). ``start``: the
        position of ``samples[0]`` among the step's prompts (its sampling seeds follow from it)."""
        return self.pool.rollout(samples, str(self.root), step, self.cfg.run.seed, start)

    def collect(self, sampler: PromptSampler, step: int, reward,
                timer: StageTimer) -> tuple[list[Episode], list[Episode], StepReport]:
        """The step's training episodes (``prompts_per_step`` groups, scored), every episode drawn
        for them, and the rollout report. Without ``grpo.dynamic_sampling`` the first two are the
        same one batch; with it, batches are drawn until that many groups are neither all right nor
        all wrong (``select_groups`` on answer correctness, not on the total reward: right answers
        that differ only in crop cost are not what dynamic sampling looks for), at most
        ``grpo.sampling_rounds`` batches, the other groups filling any shortfall in draw order."""
        g, G, P = self.cfg.grpo, self.cfg.rollout.group_size, self.cfg.grpo.prompts_per_step
        drawn: list[Episode] = []
        kept: list[list[Episode]] = []
        rest: list[list[Episode]] = []
        report = StepReport()
        for r in range(g.sampling_rounds if g.dynamic_sampling else 1):
            batch = [self.samples[i] for i in sampler.next(P)]
            with timer("rollout"):
                episodes, part = self.rollout_step(batch, step, start=r * P)
            report.workers_lost += part.workers_lost
            report.num_workers = part.num_workers
            report.reissued_prompts += part.reissued_prompts
            with timer("reward"):
                reward.score_episodes(episodes)
            drawn += episodes
            if not g.dynamic_sampling or select_groups(episodes, G, P, kept, rest, self._correct):
                break
        if not g.dynamic_sampling:
            return drawn, drawn, report
        return [ep for group in (kept + rest)[:P] for ep in group], drawn, report

    def sync(self, learner, version: int) -> dict[str, float]:
        """Push the learner's trainable weights to every rollout worker: rank 0 puts them into the
        object store in buckets itself (learner/sync.py) and the pool hands that manifest to its
        workers, keeping it for workers that restart or join later; returns the ``sync/*`` metrics
        (bytes sent, seconds in all, the slowest worker's load seconds)."""
        t0 = time.perf_counter()
        update = learner.call("publish_weights", version)[0]
        load_s = self.pool.push(update, version)
        return {"sync/bytes": float(update.bytes), "sync/tensors": float(update.num_tensors),
                "sync/seconds": time.perf_counter() - t0, "sync/load_s": load_s}

    def fit(self) -> Path:
        """Train (resuming from the newest complete checkpoint), save the final model, return its
        dir. The run's actors end with it, whether it finishes or fails."""
        resume = latest_checkpoint(self.ckpt_root) if self.cfg.grpo.resume else None
        if resume is None:
            refuse_fresh_start(self.paths.metrics("grpo"), self.ckpt_root, "grpo")
        learner, self.pool, reference = self._groups(resume or self.start_model)
        owned = [learner, self.pool, reference]
        try:
            return self._train(learner, reference, resume, owned)
        finally:
            for group in owned:
                if group is not None:
                    group.shutdown()

    def _train(self, learner, reference, resume: Path | None, owned: list) -> Path:
        g = self.cfg.grpo
        with self._learner_guard(-1):
            state = learner.call("load_state", str(resume))[0] if resume else TrainerState()
        if resume:
            log.info("resuming from step %d (%s)", state.step, resume)
        truncate_metrics(self.out_dir, state.step)  # rows a killed run logged after its checkpoint
        if state.policy_version:
            self.sync(learner, state.policy_version)
        reward = make_scorer(self.cfg.reward)  # the local Ray pool, or reward.remote_url's service
        owned.append(reward)
        sampler = PromptSampler(len(self.samples), self.cfg.run.seed, **state.extra.get("sampler", {}))
        channel = ScaleChannel.open(self.out_dir, len(self.pool), self.cfg.rollout.step_timeout_s)
        try:
            with self._tracker() as tracker:
                ready = None  # the next step's batch, collected ahead (grpo.async_rollout)
                for step in tqdm(range(state.step, g.steps), desc="grpo", initial=state.step, total=g.steps):
                    self._rescale(channel, step)  # the pool is idle here: nothing runs ahead between steps
                    state, ready = self._step(step, state, sampler, (learner, reference, reward), tracker, ready)
            out = self.paths.model("grpo")
            with self._learner_guard(g.steps - 1):
                learner.call("save", str(out), state)
        finally:
            channel.close()
        return out

    def _step(self, step: int, state: TrainerState, sampler: PromptSampler, groups: tuple,
              tracker, ready: tuple | None = None) -> tuple[TrainerState, tuple | None]:
        """One GRPO step: rollout (or the batch ``ready`` from running ahead), reward, advantages,
        update (the next step's batch collected meanwhile with ``grpo.async_rollout``), weight
        sync, log, checkpoint. Returns the new state and the next step's batch, if collected."""
        (learner, reference, reward), g = groups, self.cfg.grpo
        timer, t0 = StageTimer(), time.perf_counter()
        if ready is None:
            episodes, drawn, report = self.collect(sampler, step, reward, timer)
        else:  # its rollout and reward seconds were spent while the last step trained
            episodes, drawn, report, timer.seconds = ready
        for ep in drawn:  # the learner holds policy version ``step``
            ep.policy_lag = step - ep.policy_version
        adv = episode_advantages(episodes, self.cfg.rollout.group_size, g.adv_scale)
        kept = [(ep, a) for ep, a in zip(episodes, adv) if ep.error is None]
        seqs = [episode_to_sequence(ep, float(a)) for ep, a in kept]
        ahead = None
        if g.async_rollout and step + 1 < g.steps and not self._saves(step):
            ahead = Ahead(lambda: self._collect_ahead(sampler, step + 1, reward), f"step {step + 2}'s rollouts")
        with self._learner_guard(step):
            metrics = self._learn(learner, reference, seqs, [ep.sample_id for ep, _ in kept], step, timer)
            nxt = None
            if ahead is not None:
                with timer("rollout_wait"):  # the rollouts still running once the learner is done
                    nxt = ahead.result(self._collect_timeout())
            with timer("sync"):
                sync = self.sync(learner, step + 1)
        seen = state.samples_seen + len(drawn) // self.cfg.rollout.group_size
        state = TrainerState(step + 1, step + 1, seen, {"sampler": sampler.state()})
        self._log(tracker, step + 1, episodes, drawn, metrics, timer, time.perf_counter() - t0, sync, report)
        if self._saves(step):
            with self._learner_guard(step):
                learner.call("save", str(step_dir(self.ckpt_root, step + 1)), state)
            prune_checkpoints(self.ckpt_root, g.keep_checkpoints)
        return state, nxt

    def _saves(self, step: int) -> bool:
        """Step ``step`` (0-based) ends with a resumable checkpoint (the final model is saved apart)."""
        g = self.cfg.grpo
        return bool(g.save_every) and (step + 1) % g.save_every == 0 and step + 1 < g.steps

    def _collect_ahead(self, sampler: PromptSampler, step: int, reward) -> tuple:
        """``collect`` for ``step`` run ahead of the learner: its episodes, drawn, report, seconds."""
        timer = StageTimer()
        return (*self.collect(sampler, step, reward, timer), timer.seconds)

    def _collect_timeout(self) -> float:
        """The longest a step's collection can take: each rollout round and each scoring is bounded."""
        g = self.cfg.grpo
        rounds = g.sampling_rounds if g.dynamic_sampling else 1
        return rounds * (self.cfg.rollout.step_timeout_s + self.cfg.reward.timeout_s)

    def _rescale(self, channel: ScaleChannel, step: int) -> None:
        """Apply a pending ``awares-rl scale`` request at this step boundary."""
        pending = channel.pending()
        if pending is None:
            return
        workers, request = pending
        if workers != len(self.pool):
            log.info("scaling rollout workers %d -> %d before step %d", len(self.pool), workers, step + 1)
            self.pool.resize(workers)
        channel.applied(request, workers, step + 1)

    @contextmanager
    def _learner_guard(self, step: int):
        """A learner (or reference) actor's death ends the run with a message naming the newest
        checkpoint to resume from; rollout workers' deaths never get here (RolloutPool)."""
        try:
            yield
        except ray.exceptions.RayActorError as e:
            ckpt = latest_checkpoint(self.ckpt_root)
            where = f"the newest checkpoint is {ckpt}" if ckpt else f"no checkpoint yet: it restarts from {self.start_model}"
            raise RuntimeError(
                f"GRPO step {step + 1}: a learner actor died ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); the run "
                f"cannot go on without its optimizer state. Run the same command again to resume ({where})") from e

    def _correct(self, ep: Episode) -> bool:
        """``ep`` answered right (``reward.correct`` on its R_ans)."""
        return ep.reward is not None and self.cfg.reward.correct(ep.reward.answer)

    def _learn(self, learner: ActorGroup, reference: ActorGroup | None, seqs: list[TokenSequence],
               groups: list[str], step: int, timer: StageTimer) -> dict[str, float]:
        """The PPO update of one rollout batch: reference logprobs (KL), the learner's own logprobs
        (pi_old, frozen for the batch) of the sequences that ``needs_old_logprobs``, then
        ``ppo_epochs`` x ``mini_batches`` steps; returns their pooled metrics (``pool_steps``).
        Before the first step ``old_logprobs`` equal the learner's detached logprobs: not computed.
        ``groups``: each sequence's GRPO group (its sample id); the mini-batches take whole groups."""
        g = self.cfg.grpo
        parts = minibatch_indices(len(seqs), g.mini_batches, g.ppo_epochs, sampling_seed(self.cfg.run.seed, step, 0),
                                  groups)
        old = [seqs[i] for i in needs_old_logprobs(parts, g.ppo_epochs)]
        # the reference's and the learner's passes run at once, on the cores split between them when
        # both would take them all (concurrent_threads); timed as the wait for the first, then the
        # rest of the wait for the second
        threads = concurrent_threads(self.cfg.learner.threads, 2) if reference is not None and old else None
        ref_wait = reference.submit_split("eval_logprobs", seqs, threads) if reference is not None else None
        old_wait = learner.submit_split("eval_logprobs", old, threads) if old else None
        if ref_wait is not None:
            with timer("reference"):
                attach_scored(seqs, "ref_logprobs", ref_wait())
        if old_wait is not None:
            with timer("old_logprobs"):
                attach_scored(old, "old_logprobs", old_wait())
        with timer("learner"):
            steps = [learner.call_split("train_step", [seqs[i] for i in part], self.objective)[0] for part in parts]
        return pool_steps(steps, g.ppo_epochs)

    def _tracker(self):
        return stage_tracker(self.cfg, "grpo", self.out_dir)

    def _log(self, tracker, step: int, episodes: list[Episode], drawn: list[Episode], learner: dict,
             timer: StageTimer, step_s: float, sync: dict[str, float], report: StepReport) -> None:
        """One metrics row: ``rollout/*`` over every episode ``drawn`` this step (the policy as it
        samples), ``train/*`` over the ``episodes`` trained on."""
        ok = [ep for ep in drawn if ep.error is None and ep.reward is not None]
        row = {f"rollout/{k}": v for k, v in episode_metrics(drawn).items()}
        row["rollout/accuracy"] = sum(self.cfg.reward.correct(ep.reward.answer) for ep in ok) / max(len(ok), 1)
        row["rollout/policy_version"] = min((ep.policy_version for ep in drawn), default=0)
        row["train/policy_lag"] = max((ep.policy_lag for ep in drawn), default=0)
        if self.cfg.grpo.dynamic_sampling:
            G = self.cfg.rollout.group_size
            right = torch.tensor([float(self._correct(ep)) for ep in episodes])
            row["train/informative_groups"] = sum(informative_groups(right, G)) / max(len(episodes) // G, 1)
            row["rollout/prompts_drawn"] = len(drawn) // G
        row.update({"rollout/num_workers": report.num_workers, "rollout/workers_lost": report.workers_lost,
                    "rollout/reissued_prompts": report.reissued_prompts})
        row.update({f"learner/{k}": v for k, v in learner.items()})
        row.update({f"time/{k}_s": v for k, v in timer.seconds.items()})
        model_s = max((ep.timings.get("total_s", 0.0) for ep in episodes), default=0.0) + learner.get("step_s", 0.0)
        row.update({"time/step_s": step_s, "perf/episodes_per_s": len(episodes) / step_s,
                    "perf/model_compute_share": model_s / step_s, **sync})
        log_step(tracker, self.out_dir, row, step)
        if self.cfg.grpo.log_tables_every and step % self.cfg.grpo.log_tables_every == 0:
            tracker.log_episodes(episodes, step=step, grid=self.paths.episode_grid("grpo"))
