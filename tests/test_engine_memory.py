"""Engines take their device and GPU share from the recipe, and give their memory back on close."""

from __future__ import annotations

import weakref

import pytest
import torch

from awares_rl.core.config_io import ConfigError
from awares_rl.core.engine import release_memory, resolve_device
from awares_rl.models.config import ModelConfig
from awares_rl.rollout import make_engine
from awares_rl.rollout import vllm_engine as vllm_mod
from awares_rl.rollout.config import RolloutConfig
from awares_rl.rollout.hf_engine import HFEngine
from data_pipeline.trajectories import TrajectoryBuilder, TrajectoryConfig


@pytest.mark.parametrize("key, value", [("gpu_memory_utilization", 0.0), ("gpu_memory_utilization", 1.5),
                                        ("device", "tpu")])
def test_bad_rollout_values_name_the_key(key, value):
    with pytest.raises((ConfigError, ValueError), match=f"rollout.{key}"):
        RolloutConfig(**{key: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")
def test_cuda_asked_without_a_gpu_is_a_clear_error():
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="rollout.device=cuda but torch sees no CUDA GPU"):
        make_engine(RolloutConfig(backend="hf", device="cuda"), ModelConfig(), "unused")


def test_vllm_gets_the_recipes_gpu_share_and_device(monkeypatch):
    seen = {}

    class FakeVLLM:
        def __init__(self, path, **kw):
            seen.update(kw)

    monkeypatch.setattr(vllm_mod, "VLLMEngine", FakeVLLM)
    monkeypatch.setattr("awares_rl.rollout.vllm_available", lambda: (True, ""))
    make_engine(RolloutConfig(backend="vllm", gpu_memory_utilization=0.35, device="cpu"), ModelConfig(), "m")
    assert seen["gpu_memory_utilization"] == 0.35 and seen["device"] == "cpu"


def test_hf_engine_device_from_recipe_and_close_frees_the_model(tiny_dir, monkeypatch):
    engine = make_engine(RolloutConfig(backend="hf", device="cpu"), ModelConfig(), tiny_dir)
    assert isinstance(engine, HFEngine) and engine.device == "cpu"
    assert next(engine.model.parameters()).device.type == "cpu"
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    ref = weakref.ref(engine.model)
    engine.close()
    assert ref() is None and emptied == [1]  # collected, and CUDA's cache handed back


def test_release_memory_without_cuda_only_collects(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: pytest.fail("empty_cache without CUDA"))
    release_memory()


class Closing:
    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def test_trajectory_builder_closes_both_engines_once():
    main, grounding = Closing(), Closing()
    builder = TrajectoryBuilder(main, None, None, TrajectoryConfig())
    builder.vlm = type("G", (), {"engine": grounding})()
    builder.close()
    assert (main.closed, grounding.closed) == (1, 1)
    shared = TrajectoryBuilder(main, None, None, TrajectoryConfig())
    shared.vlm = type("G", (), {"engine": main})()  # grounding on the same engine: closed once
    shared.close()
    assert main.closed == 2
