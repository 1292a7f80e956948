"""Rollout: engines (vLLM, transformers) and the EpisodeRunner."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from awares_rl.core.engine import Engine, GenOutput, GenRequest, SamplingConfig, resolve_device
from awares_rl.rollout.runner import EpisodeRunner, EpisodeSettings

log = logging.getLogger(__name__)


def vllm_available() -> tuple[bool, str]:
    """Whether ``import vllm`` works here, and why not."""
    try:
        importlib.import_module("vllm")
        return True, ""
    except Exception as e:  # vLLM can fail with OSError etc. on broken installs
        return False, f"{type(e).__name__}: {e}"


def make_engine(rollout, model, model_path: str | Path, seed: int = 0) -> Engine:
    """Build the engine a recipe asks for (``rollout.backend``).

    With ``backend: vllm`` and ``fallback_to_hf: true`` a machine without a working vLLM gets the
    transformers engine and a logged warning; with ``fallback_to_hf: false`` it is an error. The
    device is ``rollout.device`` (``resolve_device``); vLLM takes ``rollout.gpu_memory_utilization``
    of a CUDA GPU. Both resize images within ``model.min_visual_tokens`` / ``max_visual_tokens`` when set.
    """
    from awares_rl.models import load_processor, processor_size
    from awares_rl.rollout.hf_engine import HFEngine

    device = resolve_device(rollout.device)
    if rollout.backend == "vllm":
        ok, why = vllm_available()
        if ok:
            from awares_rl.rollout.vllm_engine import VLLMEngine

            log.info("starting a vLLM engine on %s", model_path)
            return VLLMEngine(
                str(model_path), dtype=model.dtype, max_model_len=rollout.max_model_len,
                max_images=1 + rollout.max_crops, prefix_caching=rollout.prefix_caching,
                enforce_eager=rollout.enforce_eager, seed=seed, kv_cache_gib=rollout.kv_cache_gib,
                image_size=processor_size(model_path, model),
                gpu_memory_utilization=rollout.gpu_memory_utilization, device=device,
                idle_spin_s=rollout.vllm_idle_spin_s,
            )
        if not rollout.fallback_to_hf:
            raise RuntimeError(
                f"rollout.backend=vllm but vLLM cannot be imported ({why}); install the [cpu] or "
                "[gpu] extra, or set rollout.backend=hf or rollout.fallback_to_hf=true"
            )
        log.warning("vLLM unavailable (%s): falling back to the transformers engine", why)
    log.info("starting a transformers engine on %s", model_path)
    return HFEngine(str(model_path), dtype=model.dtype, device=device, attn_implementation=model.attn_implementation,
                    processor=load_processor(model_path, model))


# What an engine serves besides the weights: the architecture, the image processor and the chat
# template (files save_pretrained writes), and the tokenizer as loaded (its tokenizer_config.json
# gains loader fields such as local_files_only on each save; generation_config is not read).
SERVING_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja",
                 "chat_template.json")
# where it came from, by what, and the saved dtype (engines run at the recipe's model.dtype; a
# save after training also writes it into each sub-config)
_VOLATILE_KEYS = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")


def _without_volatile(data):
    if isinstance(data, dict):
        return {k: _without_volatile(v) for k, v in data.items() if k not in _VOLATILE_KEYS}
    return data


def _serving_file(path: Path):
    if not path.is_file():
        return None
    return _without_volatile(json.loads(path.read_text())) if path.suffix == ".json" else path.read_bytes()


def _tokens(path: Path) -> tuple:
    from awares_rl.models import load_processor

    tok = load_processor(path).tokenizer
    return tok.get_vocab(), tok.all_special_tokens, tok.chat_template


def same_serving(a: str | Path, b: str | Path) -> bool:
    """Whether model directories ``a`` and ``b`` differ at most in their weights (``SERVING_FILES``
    equal but for ``_VOLATILE_KEYS``, the same tokens and chat template): an engine of one then
    serves the other once its weights are loaded."""
    a, b = Path(a), Path(b)
    return all(_serving_file(a / f) == _serving_file(b / f) for f in SERVING_FILES) and _tokens(a) == _tokens(b)


def switch_engine(engine: Engine, serving: str | Path, model_path: str | Path, rollout, model,
                  seed: int = 0) -> Engine:
    """An engine of ``model_path`` from ``engine`` (which serves ``serving``): the same engine with
    the checkpoint's weights loaded in place when only the weights differ (``same_serving``; an
    engine start saved), else ``engine`` closed and a new one started (logged)."""
    if same_serving(serving, model_path):
        log.info("loading %s's weights into the running engine (of %s)", model_path, serving)
        engine.load_checkpoint(model_path, version=0)
        return engine
    log.info("%s differs from %s beyond its weights (%s or its tokens): a new engine", model_path, serving,
             ", ".join(SERVING_FILES))
    engine.close()
    return make_engine(rollout, model, model_path, seed=seed)


__all__ = [
    "Engine", "EpisodeRunner", "EpisodeSettings", "GenOutput", "GenRequest", "SamplingConfig",
    "make_engine", "same_serving", "switch_engine", "vllm_available",
]
