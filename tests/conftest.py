"""Shared fixtures: a tiny VLM (the default family, Qwen3-VL) built in-process, and one taught to
use the crop tool."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

import awares_rl  # noqa: F401  (torchvision compat before transformers)
from awares_rl.core.crops import cut_crops, low_res_view
from awares_rl.core.tokens import (
    assistant_ids,
    crops_turn_ids,
    expand_image_tokens,
    first_turn_ids,
    image_token_counts,
)
from awares_rl.models.tiny import TinyModelConfig, build_tiny
from cluster.actor_group import init_local_ray

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(1)

TOOL_Q = "what is in the red panel?"
DIRECT_Q = "what colour is the image?"


def episode_inputs() -> list[tuple[str, Image.Image]]:
    """(question, image) pairs the tool model was taught: tool, direct, tool, direct."""
    qs = [TOOL_Q, DIRECT_Q, TOOL_Q, DIRECT_Q]
    return [(q, make_image(i, (448, 448 + 56 * i))) for i, q in enumerate(qs)]


def make_image(seed: int, size: tuple[int, int] = (448, 448)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _conversation(processor, image, question, turn1, crops=None, turn2=None):
    tok = processor.tokenizer
    low = low_res_view(image)
    ids, labels, images = first_turn_ids(tok, question), None, [low]
    labels = [-100] * len(ids)
    a1 = assistant_ids(tok, turn1)
    ids, labels = ids + a1, labels + a1
    if crops:
        s2 = crops_turn_ids(tok, crops)
        a2 = assistant_ids(tok, turn2)
        ids, labels = ids + s2 + a2, labels + [-100] * len(s2) + a2
        images += cut_crops(image, crops)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    counts = image_token_counts(processor.image_processor, images)
    exp_ids = expand_image_tokens(ids, image_id, counts)
    exp_labels = expand_image_tokens([-1 if t == image_id else lab for t, lab in zip(ids, labels)], -1, counts)
    exp_labels = [-100 if v == -1 else v for v in exp_labels]
    vision = processor.image_processor(images=images, return_tensors="pt")
    input_ids = torch.tensor([exp_ids])
    return dict(input_ids=input_ids, labels=torch.tensor([exp_labels]),
                mm_token_type_ids=(input_ids == image_id).long(), **vision)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """An untrained tiny model (the default family) saved to disk."""
    model, processor = build_tiny(TinyModelConfig(seed=0), [TOOL_Q, DIRECT_Q, "blue", "red"])
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def train_tool_model(out: Path, family: str = "qwen3_vl") -> Path:
    """A tiny model of ``family`` overfit (a few seconds) to: TOOL_Q -> GET_CROPS: ['0','4'] ->
    "red"; DIRECT_Q -> "blue". Real weights, so engines can be compared on real 2-turn episodes."""
    model, processor = build_tiny(TinyModelConfig(seed=1, family=family), [TOOL_Q, DIRECT_Q, "blue", "red"])
    model.train()
    batches = [
        _conversation(processor, im, q, "GET_CROPS: ['0','4']", [0, 4], "red") if q == TOOL_Q
        else _conversation(processor, im, q, "blue")
        for q, im in episode_inputs()
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(50):
        for batch in batches:
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tool_model_dir(tmp_path_factory) -> Path:
    """The tool model of the default tiny family (Qwen3-VL)."""
    return train_tool_model(tmp_path_factory.mktemp("tool_model"))


@pytest.fixture
def wandb_sandbox(tmp_path, monkeypatch):
    """Keep every W&B file inside tmp_path, quiet, and the CWD clean."""
    for var, sub in [
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ]:
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB__DISABLE_STATS", "true")  # no system-metrics sampler process
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def start_server(config: uvicorn.Config) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Run uvicorn in a thread until it listens; returns it, its thread and its base URL."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module (2 CPUs, its own short temp dir)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    init_local_ray(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _ray_ends_with_its_module(request):
    """A Ray a test module started in this process (an in-process GRPO ``fit()`` does, as a user's
    driver would) is shut down after the module, named in a warning: left up, it holds its ports
    (the dashboard agent's 52365) and its idle processes share the 2 cores with every later test."""
    yield
    import sys
    import warnings

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        warnings.warn(f"{request.module.__name__} left a local Ray up in the test process; shut down", stacklevel=1)
        ray.shutdown()
