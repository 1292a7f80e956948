"""The embedding judge's backends (reward.embedding_backend) against the fp32 torch reference."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reward.config import RewardConfig
from reward.embedding import embedding_cosine
from reward.onnx_encoder import _write_atomic, onnx_cache_dir

# 50 (prediction, reference) pairs of short VQA answers: exact, case/punctuation, synonyms,
# numbers written both ways, near misses, unrelated pairs
PAIRS = [
    ("red", "red"), ("Red.", "red"), ("blue", "red"), ("dark blue", "navy"), ("car", "automobile"),
    ("a dog", "puppy"), ("cat", "kitten"), ("left", "on the left"), ("left", "right"),
    ("top left", "upper left"), ("yes", "yes"), ("yes", "no"), ("no", "nope"), ("two", "2"),
    ("forty two", "42"), ("42", "24"), ("1999", "1998"), ("3.5", "3.50"), ("10%", "ten percent"),
    ("$12.99", "12.99 dollars"), ("June 5", "5 June"), ("2021-03-04", "March 4 2021"),
    ("invoice 4471", "invoice number 4471"), ("total revenue", "revenue total"),
    ("the bar chart", "a graph"), ("stop sign", "traffic sign"), ("apple", "banana"),
    ("New York", "NYC"), ("London", "Paris"), ("doctor", "physician"), ("big", "large"),
    ("small", "tiny"), ("happy", "sad"), ("three cats", "3 cats"), ("a man", "a woman"),
    ("kitchen", "bathroom"), ("tennis", "baseball"), ("pizza", "hamburger"), ("0", "zero"),
    ("seven", "eleven"), ("Q3 2020", "third quarter 2020"), ("label B", "label b"),
    ("panel code 583", "code 583"), ("green", "olive"), ("horse", "piano"),
    ("north", "umbrella"), ("the year 1984", "1984"), ("blue circle", "a blue round shape"),
    ("", "something"), ("white", "snow"),
]  # fmt: skip
PREDS = [p for p, _ in PAIRS]
REFS = [[r] for _, r in PAIRS]
# the agreement each backend keeps with torch fp32 (README's reward section). bf16 keeps issue
# #14's 0.02 (0.006 measured here); int8 misses it (0.06: ("", "something")), which is why torch
# stays the default
TOLERANCE = {"torch-bf16": 0.02, "onnx": 1e-4, "onnx-int8": 0.1}


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return embedding_cosine(PREDS, REFS, backend="torch")


@pytest.mark.parametrize("backend", ["torch-bf16", "onnx", "onnx-int8"])
def test_backend_agrees_with_torch_fp32(backend, reference):
    got = embedding_cosine(PREDS, REFS, backend=backend)
    diffs = [abs(a - b) for a, b in zip(got, reference, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    print(f"{backend}: max |score - torch fp32| = {diffs[worst]:.5f} at {PAIRS[worst]}")
    assert diffs[worst] <= TOLERANCE[backend], (backend, PAIRS[worst], diffs[worst])
    assert reference[0] == pytest.approx(1.0, abs=1e-5)  # ("red", "red"): the reference is sane


def test_the_config_backend_is_the_one_that_scores(reference):
    """reward.embedding_backend reaches the judge the reward service runs (reward.scoring)."""
    from reward.scoring import RewardRequest, score_requests
    from reward.service import RewardService

    requests = [RewardRequest(p, r) for p, r in zip(PREDS, REFS, strict=True)]
    int8 = [p.answer for p in score_requests(requests, RewardConfig(embedding_backend="onnx-int8"))]
    assert int8 == pytest.approx(embedding_cosine(PREDS, REFS, backend="onnx-int8"), abs=1e-6)
    assert int8 != pytest.approx(reference, abs=1e-3)  # not the torch scores
    from reward.embedding import load_encoder

    service = RewardService(RewardConfig(embedding_backend="onnx"), num_threads=1)
    assert service.warmup()["status"] == "ok"  # loads the encoder its actor's scoring will use
    assert load_encoder(None, "onnx").onnx.session.get_session_options().intra_op_num_threads == 1


def test_onnx_session_uses_the_thread_count_it_was_given():
    import torch

    from reward.embedding import load_encoder

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load_encoder(None, "onnx")
        torch.set_num_threads(2)
        two = load_encoder(None, "onnx")
    finally:
        torch.set_num_threads(before)
    assert one is not two and (one.onnx.threads, two.onnx.threads) == (1, 2)
    assert one.onnx.session.get_session_options().intra_op_num_threads == 1
    assert two.onnx.session.get_session_options().intra_op_num_threads == 2


def test_concurrent_cache_writes_leave_one_whole_file(tmp_path):
    """Two reward actors exporting into one empty cache at once: each writes a private file and
    renames it over the target, so the target is one writer's whole file, never a mix, and a
    failed export leaves nothing behind."""
    target = tmp_path / "model.onnx"

    def slow_writer(byte: bytes) -> Callable[[str], None]:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                for _ in range(20):
                    f.write(byte * 1000)
                    f.flush()
                    time.sleep(0.005)

        return write

    threads = [
        threading.Thread(target=_write_atomic, args=(target, slow_writer(b))) for b in (b"A", b"B")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert target.read_bytes() in (b"A" * 20000, b"B" * 20000)

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        _write_atomic(tmp_path / "other.onnx", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_cache_dir_follows_the_model_files(tmp_path, monkeypatch):
    monkeypatch.setenv("AWARES_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1")
    first = onnx_cache_dir(str(model))
    assert first.parent == tmp_path / "cache" / "onnx" and first == onnx_cache_dir(str(model))
    os.utime(model / "model.safetensors", ns=(1, 10**18))  # new weights, same folder
    assert onnx_cache_dir(str(model)) != first


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"reward.embedding_backend='onnx8'.*onnx-int8"):
        RewardConfig(embedding_backend="onnx8")
    with pytest.raises(ValueError, match=r"embedding backend 'tf'.*choose one of"):
        embedding_cosine(["a"], [["a"]], backend="tf")


def test_bf16_backend_runs_in_bf16_and_normalises_in_fp32(reference):
    """torch-bf16 is its own model copy in bfloat16 (the fp32 default's stays fp32), and its
    embeddings come back float32 and unit-norm."""
    import torch

    from reward.embedding import bf16_cpu, load_encoder

    bf16, fp32 = load_encoder(None, "torch-bf16"), load_encoder(None, "torch")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32
    emb = bf16.embed(["red", "dark blue"])
    assert emb.dtype == torch.float32 and emb.norm(dim=-1).sub(1).abs().max() < 1e-5
    got = embedding_cosine(PREDS, REFS, backend="torch-bf16")
    assert got != pytest.approx(reference, abs=1e-4)  # bf16 scores, not the fp32 ones
    assert isinstance(bf16_cpu(), bool)
