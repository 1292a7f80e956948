"""The generation-engine interface shared by the vLLM and transformers back-ends."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image


@dataclass(frozen=True)
class SamplingConfig:
    """How a turn is sampled. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    # token ids the turn may not START with (masked at its first position only; logprobs stay the
    # raw model's): the last turn's tool-call opening (``tokens.tool_call_open_ids``)
    ban_first: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenRequest:
    """One prompt: compact ids (one image token per image) and its images, in order."""

    prompt_ids: list[int]
    images: list[Image.Image]
    seed: int = 0  # per-request sampling seed: the same seed gives the same sample


@dataclass
class GenOutput:
    """``prompt_ids`` with image tokens expanded, the generated ids (ending in EOS unless cut off)
    and their log-probabilities under the engine's model (raw logits, temperature 1)."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)
    timings: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """A generation back-end. ``version`` is the policy version of the weights it holds."""

    version: int

    def generate(self, requests: list[GenRequest], sampling: SamplingConfig) -> list[GenOutput]:
        """Generate one continuation per request, batched."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace (a subset of) the model's weights in place, consuming ``named_tensors`` once (a
        stream of object-store buckets), and record ``version``."""
        ...

    def load_checkpoint(self, model_dir: str | Path, version: int) -> None:
        """``load_weights`` of a saved model directory's safetensors (``checkpoint.checkpoint_tensors``)."""
        ...

    def close(self) -> None:
        """Release the engine's processes and memory."""
        ...


def release_memory() -> None:
    """After an engine (or any model) is dropped: collect it and hand PyTorch's cached CUDA blocks
    back, so the next engine or learner of the process gets that memory."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_device(device: str) -> str:
    """``rollout.device``: "auto" (CUDA when torch sees a GPU, else CPU), "cpu" or "cuda"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("rollout.device=cuda but torch sees no CUDA GPU here (a CPU torch build, or a Ray actor "
                           "without rollout.gpus_per_worker); set rollout.device=auto or cpu")
    return device
