"""RolloutWorker: a Ray actor holding one engine and an EpisodeRunner.

Rollout workers scale independently of learners (``rollout.num_workers``); the driver splits a
step's prompts across them and pushes new weights to all of them after each update.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from awares_rl.core.episode import Episode
from awares_rl.core.images import DEFAULT_MAX_PIXELS
from awares_rl.learner.sync import WeightUpdate, iter_weights
from awares_rl.models.config import ModelConfig
from awares_rl.rollout import EpisodeRunner, EpisodeSettings, SamplingConfig, make_engine
from awares_rl.rollout.config import RolloutConfig
from cluster.actor_group import reap_group_on_exit
from cluster.resources import torch_threads


class RolloutWorker:
    """Generates Episodes for a list of samples; accepts versioned weight updates.

    ``dist`` (cluster.actor_group.DistInfo) is accepted so that rollout workers are placed by the
    same ActorGroup as learners; rollout workers do not join a torch.distributed group.
    """

    def __init__(self, rollout: RolloutConfig, model: ModelConfig, model_path: str, seed: int = 0,
                 threads: int | None = None, dist=None, max_image_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        torch.set_num_threads(threads or torch_threads(rollout.threads, rollout.cpus_per_worker))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(rollout.kv_cache_gib))
        self.reaper = reap_group_on_exit()  # vLLM's engine processes must not outlive a killed run
        self.cfg = rollout
        self.engine = make_engine(rollout, model, model_path, seed=seed)
        tokenizer = self.engine.processor.tokenizer if hasattr(self.engine, "processor") else self.engine.tokenizer
        self.runner = EpisodeRunner(self.engine, tokenizer, EpisodeSettings.from_rollout(rollout, max_image_pixels))
        self.sampling = SamplingConfig(rollout.temperature, rollout.top_p, rollout.max_new_tokens)

    def run(self, samples: list, root: str, seed: int, group_size: int | None = None,
            sampling: SamplingConfig | None = None) -> list[Episode]:
        """G episodes per sample (group-contiguous), images loaded from ``root``."""
        return self.runner.run(samples, group_size or self.cfg.group_size, sampling or self.sampling,
                               seed=seed, root=Path(root))

    def load_weights(self, weights: WeightUpdate, version: int) -> float:
        """In-place update to the learner's published weights (``LearnerWorker.publish_weights``),
        fetched from the object store a bucket at a time; returns the seconds it took."""
        t0 = time.perf_counter()
        self.engine.load_weights(iter_weights(weights), version)
        return time.perf_counter() - t0

    def pid(self) -> int:
        """The worker's process id (what a SIGKILL of this worker would target)."""
        return os.getpid()

    def version(self) -> int:
        return self.engine.version

    def backend(self) -> str:
        return type(self.engine).__name__

    def close(self) -> None:
        self.engine.close()
