"""Deterministic, resumable choice of prompts and sampling seeds (SFT and GRPO)."""

from __future__ import annotations

import numpy as np


class PromptSampler:
    """Deterministic epoch-wise shuffling with a resumable position ``(epoch, index)``."""

    def __init__(self, n: int, seed: int, epoch: int = 0, index: int = 0) -> None:
        if n < 1:
            raise ValueError("PromptSampler needs at least one sample")
        self.n, self.seed, self.epoch, self.index = n, seed, epoch, index

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            order = self._order()
            take = order[self.index:self.index + k - len(out)].tolist()
            out += take
            self.index += len(take)
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


def sampling_seed(run_seed: int, step: int, offset: int) -> int:
    """Per-episode sampling seeds that depend on (run, step, position) only, so a resumed run and
    any number of rollout workers draw exactly the same episodes."""
    return (run_seed * 1_000_003 + step * 65_537 + offset) % (2**31 - 1)
