"""The embedding judge's encoder through ONNX Runtime: fp32, or int8 with dynamic quantisation.

The sentence-transformers model is exported once with ``torch.onnx`` (the TorchScript exporter:
optimum-onnx, which sentence-transformers' own ``backend="onnx"`` needs, pins transformers < 4.58)
and, for int8, quantised with ``onnxruntime.quantization.quantize_dynamic``. Both files are cached
under ``onnx_cache_dir`` and written atomically (a private temporary file, then ``os.replace``), so
two reward actors exporting at once both end with a whole file, never a torn one.

Texts are tokenised by the sentence-transformers model itself (its truncation, its special tokens)
and run sorted by token count, each batch padded to its own longest text only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

QUANTIZED = "onnx-int8"


def onnx_cache_dir(model_path: str) -> Path:
    """Where the ONNX files of the sentence-transformers folder ``model_path`` live: under
    ``$AWARES_CACHE_DIR`` (default ``$XDG_CACHE_HOME/awares_rl``, i.e. ``~/.cache/awares_rl``),
    keyed by the folder's path, the newest mtime of its files and the exporter's versions."""
    import onnxruntime

    root = Path(model_path).resolve()
    newest = max((p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()), default=0)
    key = f"{root}|{newest}|torch {torch.__version__}|onnxruntime {onnxruntime.__version__}"
    base = os.environ.get("AWARES_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "awares_rl"
    )
    return Path(base, "onnx", f"{root.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a private file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _SentenceEmbedding(torch.nn.Module):
    """``SentenceTransformer`` forward on positional tensors, for the exporter."""

    def __init__(self, st: torch.nn.Module, names: list[str], constants: dict) -> None:
        super().__init__()
        self.st, self.names, self.constants = st, names, constants

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = self.constants | dict(zip(self.names, tensors, strict=True))
        return self.st(features)["sentence_embedding"]


def export_onnx(st: torch.nn.Module, path: Path) -> None:
    """The fp32 ONNX graph of sentence-transformers model ``st`` (batch and length dynamic)."""
    # two texts of different lengths: the traced graph keeps the padding-mask path
    features = st.preprocess(["a short text", "a somewhat longer text than that one"])
    names = [k for k, v in features.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in features.items() if k not in names}  # e.g. modality="text"
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}

    def write(tmp: str) -> None:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                _SentenceEmbedding(st, names, constants).eval(),
                tuple(features[n] for n in names),
                tmp,
                dynamo=False,
                input_names=names,
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=17,
            )

    _write_atomic(path, write)


def quantize_onnx(src: Path, path: Path) -> None:
    """int8 weights (per output channel) for every MatMul of ``src``; activations are
    quantised on the fly (dynamic quantisation), symmetric around 0 (signed int8 both sides: the
    s8 x s8 kernels, ~1.2x faster than asymmetric uint8 activations on an AVX-512 VNNI CPU at the
    same scores: README's reward section)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: str) -> None:
        quantize_dynamic(
            src, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
            extra_options={"ActivationSymmetric": True},
        )

    _write_atomic(path, write)


def onnx_model_file(st: torch.nn.Module, model_path: str, backend: str) -> Path:
    """The cached ONNX file for ``backend`` ("onnx" or "onnx-int8"), exported on first use."""
    cache = onnx_cache_dir(model_path)
    fp32 = cache / "model.onnx"
    if not fp32.is_file():
        export_onnx(st, fp32)
    if backend != QUANTIZED:
        return fp32
    int8 = cache / "model-int8-sym.onnx"  # named by its quantisation settings
    if not int8.is_file():
        quantize_onnx(fp32, int8)
    return int8


class OnnxTextEncoder:
    """Unit-norm embeddings from an ONNX Runtime session on ``threads`` intra-op threads."""

    def __init__(self, st: torch.nn.Module, model_path: str, backend: str, threads: int) -> None:
        import onnxruntime as ort

        self.st, self.model_path, self.backend, self.threads = st, model_path, backend, threads
        self.model_file = onnx_model_file(st, model_path, backend)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # the CPUs its Ray actor was granted
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.model_file), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """Rows of ``texts`` in order; batches cut from the texts sorted by token count."""
        import numpy as np

        features = self.st.preprocess(list(texts))
        features = {n: features[n].numpy() for n in self.input_names}
        lengths = features["attention_mask"].sum(1)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.st.get_embedding_dimension()), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())  # the other columns are padding for these rows
            cols = slice(-width, None) if self.st.tokenizer.padding_side == "left" else slice(width)
            feed = {n: features[n][rows, cols].astype(np.int64) for n in self.input_names}
            out[rows] = self.session.run(None, feed)[0]
        emb = torch.from_numpy(out)
        return torch.nn.functional.normalize(emb, dim=-1)
