"""Local datasets -> Sample JSONL, and Sample JSONL -> validated samples / HF ``datasets``.

``convert(fmt, src, out_dir)`` reads a benchmark in any of its usual local forms — an HF dataset
folder written by ``save_to_disk``, a parquet file (or a folder of them), or the benchmark's own
JSON / JSONL annotations with image files — and writes ``out_dir/<fmt>.jsonl`` plus
``out_dir/images/``. Each malformed record is reported as ``file:line`` (JSONL), ``file:record i``
(JSON) or ``file:row i`` (parquet / HF) with the field; ``on_error="fail"`` stops at the first,
``"skip"`` drops it and counts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from awares_rl.core.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from awares_rl.core.sample import (
    Sample,
    SampleError,
    iter_jsonl_lines,
    parse_line,
    write_jsonl,
)
from data_pipeline.formats import CONVERTERS, IMAGE_DIRS, METRIC, RawSample, RecordError

ON_ERROR = ("fail", "skip")


class ConvertError(ValueError):
    """A malformed record or line, with its location (``where``) in the source."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}")


@dataclass
class ConvertReport:
    """What ``convert`` / ``read_samples`` did: output path, counts and skipped-record reasons."""

    path: Path | None = None
    written: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"wrote {self.written} samples to {self.path}; skipped {self.skipped} malformed"


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


# ---------------------------------------------------------------- Sample JSONL: read / validate
def read_samples(
    path: str | Path, on_error: str = "fail", check_images: bool = True,
    decode_images: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[Sample], ConvertReport]:
    """Read and validate a Sample JSONL file; every error names ``file:line`` and the field.

    ``check_images``: each image exists inside the JSONL's folder (the data root);
    ``decode_images`` (``data validate``): each also decodes, within ``max_pixels``, and holds
    its evidence boxes. An empty file raises SampleError either way."""
    _check_on_error(on_error)
    path, samples, report = Path(path), [], ConvertReport(path=Path(path))
    seen: set[str] = set()
    lines = list(iter_jsonl_lines(path))
    if not lines:
        raise SampleError(str(path), "<file>", "has no samples (the file is empty); point at the "
                          "right file or regenerate it")
    for lineno, line in lines:
        where = f"{path}:{lineno}"
        try:
            if isinstance(line, SampleError):
                raise line
            s = parse_line(line, where)
            if s.id in seen:
                raise SampleError(where, "id", f"duplicate id {s.id!r}")
            if check_images:
                _check_image_of(s, path, where, decode_images, max_pixels)
        except SampleError as e:
            if on_error == "fail":
                raise
            report.skipped += 1
            report.errors.append(str(e))
            continue
        seen.add(s.id)
        samples.append(s)
    report.written = len(samples)
    return samples, report


def _check_image_of(s: Sample, jsonl: Path, where: str, decode: bool, max_pixels: int) -> None:
    """SampleError unless ``s.image`` stays inside the data root and exists (and, with ``decode``,
    decodes within ``max_pixels`` and contains every evidence box)."""
    rel = os.path.normpath(s.image)
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        raise SampleError(where, "image", f"{s.image!r} points outside the data root {jsonl.parent}; "
                          "image paths are relative to the JSONL file and stay below its folder")
    image_path = s.image_path(jsonl)
    if not image_path.is_file():
        raise SampleError(where, "image", f"file not found: {image_path}")
    if not decode:
        return
    try:
        w, h = load_image(image_path, max_pixels).size
    except ImageError as e:
        raise SampleError(where, "image", str(e)) from e
    for i, (x1, y1, x2, y2) in enumerate(s.evidence_boxes):
        if x2 > w or y2 > h:
            raise SampleError(where, f"evidence_boxes[{i}]", f"{[x1, y1, x2, y2]} reaches outside the "
                              f"{w}x{h} image; boxes are pixels of the original image")


def load_hf_dataset(path: str | Path, on_error: str = "fail"):
    """A Sample JSONL file as a ``datasets.Dataset`` (``image`` an Image feature, absolute path)."""
    import datasets

    samples, _ = read_samples(path, on_error)
    rows = []
    for s in samples:
        row = s.to_json()
        row["image"] = str(s.image_path(path))
        row.setdefault("evidence_boxes", [])
        row.setdefault("metric", None)
        row.setdefault("needs_high_res", None)
        row["meta"] = json.dumps(s.meta)  # free-form: kept as a JSON string column
        rows.append(row)
    features = datasets.Features({
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "evidence_boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
        "metric": datasets.Value("string"),
        "needs_high_res": datasets.Value("bool"),
        "meta": datasets.Value("string"),
    })
    return datasets.Dataset.from_list(rows, features=features)


# ---------------------------------------------------------------- sources: records with locations
def iter_records(src: Path, split: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, record) pairs of any supported form; ``where`` locates the record for errors."""
    if src.is_dir() and ((src / "dataset_dict.json").exists() or (src / "state.json").exists()):
        yield from _iter_hf_disk(src, split)
    elif src.suffix == ".parquet" or (src.is_dir() and any(src.rglob("*.parquet"))):
        yield from _iter_parquet(src)
    elif src.suffix == ".jsonl":
        yield from _iter_jsonl_records(src)
    elif src.suffix == ".json":
        yield from _iter_json(src)
    elif src.is_dir() and (src / "test_questions.jsonl").exists():
        yield from _iter_jsonl_records(src / "test_questions.jsonl")
    else:
        raise ConvertError(
            str(src), "unknown source form: expected an HF save_to_disk folder, a .parquet file "
            "or folder, or the benchmark's .json / .jsonl annotation file"
        )


def _iter_hf_disk(src: Path, split: str | None) -> Iterator[tuple[str, dict]]:
    import datasets

    ds = datasets.load_from_disk(str(src))
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise ConvertError(str(src), f"has splits {sorted(ds)}: choose one with --split")
        ds = ds[split] if split is not None else next(iter(ds.values()))
    if "image" in ds.features and isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    for i, row in enumerate(ds):
        yield f"{src}:row {i}", row


def _iter_parquet(src: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    files = [src] if src.is_file() else sorted(src.rglob("*.parquet"))
    for f in files:
        try:
            table = pq.read_table(f)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ConvertError(str(f), f"not a readable parquet file ({e}); re-download or re-export it") from e
        for i, row in enumerate(table.to_pylist()):
            yield f"{f}:row {i}", row


def _iter_jsonl_records(src: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in iter_jsonl_lines(src):
        where = f"{src}:{lineno}"
        if isinstance(line, SampleError):
            yield where, {"__error__": str(line).split(": ", 1)[1]}
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, {"__error__": f"invalid JSON ({e.msg} at column {e.colno})"}


def _iter_json(src: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and e.lineno > 1:  # JSON lines named .json (POPE's coco_pope_*.json)
            yield from _iter_jsonl_records(src)
            return
        raise ConvertError(f"{src}:{e.lineno}", f"invalid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise ConvertError(str(src), f"byte {e.start} is not UTF-8; re-save the file as UTF-8") from e
    records = data.get("data", data.get("annotations")) if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise ConvertError(str(src), "expected a list of records or {\"data\": [...]}")
    for i, rec in enumerate(records):
        yield f"{src}:record {i}", rec


# ---------------------------------------------------------------- images
def _image_dest(source: Any, base: Path, fmt: str) -> tuple[str, Path | bytes]:
    """(file name under images/, a source path or the bytes to write)."""
    if isinstance(source, dict):
        if source.get("bytes"):
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise RecordError("image", "an HF image value with neither bytes nor path")
    if isinstance(source, Image.Image):
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        source = buf.getvalue()
    if isinstance(source, bytes):
        try:
            with Image.open(io.BytesIO(source)) as im:
                ext = (im.format or "png").lower().replace("jpeg", "jpg")
        except (OSError, SyntaxError, ValueError) as e:
            raise RecordError("image", f"bytes that are not a readable image ({type(e).__name__}: {e})") from e
        return f"{hashlib.sha1(source).hexdigest()[:16]}.{ext}", source
    if isinstance(source, str):
        for sub in IMAGE_DIRS[fmt]:
            path = base / sub / source
            if path.is_file():
                rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
                return str(rel).replace("/", "__"), path
        raise RecordError("image", f"file {source!r} not found under {base} ({', '.join(IMAGE_DIRS[fmt][1:])})")
    raise RecordError("image", f"unsupported image value of type {type(source).__name__}")


def _write_image(name: str, data: Path | bytes, images_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    dest = images_dir / name
    if not dest.exists():
        if isinstance(data, bytes):
            dest.write_bytes(data)
        else:
            shutil.copyfile(data, dest)
    try:
        load_image(dest, max_pixels)  # a full decode: verify() misses truncated pixel data
    except ImageError as e:
        dest.unlink(missing_ok=True)
        raise RecordError("image", str(e)) from e
    return f"images/{name}"


def _vstar_boxes(record: dict, base: Path) -> dict:
    """V* keeps boxes in a per-image ``<stem>.json`` beside the image: merge its ``bbox``."""
    image = record.get("image")
    if isinstance(image, str) and "bbox" not in record:
        ann = (base / image).with_suffix(".json")
        if ann.is_file():
            record = {**record, "bbox": json.loads(ann.read_text()).get("bbox") or []}
    return record


# ---------------------------------------------------------------- convert
def convert(
    fmt: str, src: str | Path, out_dir: str | Path, on_error: str = "fail", split: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ConvertReport:
    """Convert a local benchmark to ``out_dir/<fmt>.jsonl`` + ``out_dir/images/``; an image that
    does not decode, or has more than ``max_pixels``, makes its record malformed."""
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(CONVERTERS)}")
    _check_on_error(on_error)
    src, out = Path(src), Path(out_dir)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source not found")
    (out / "images").mkdir(parents=True, exist_ok=True)
    base = src if src.is_dir() else src.parent
    report, samples, seen = ConvertReport(path=out / f"{fmt}.jsonl"), [], set()
    for index, (where, record) in enumerate(iter_records(src, split)):
        try:
            sample = _convert_one(fmt, record, index, base, out, seen, max_pixels)
        except (RecordError, SampleError) as e:
            if on_error == "fail":
                raise ConvertError(where, str(e)) from e
            report.skipped += 1
            report.errors.append(f"{where}: {e}")
            continue
        seen.add(sample.id)
        samples.append(sample)
    write_jsonl(samples, report.path)
    report.written = len(samples)
    return report


def _convert_one(fmt: str, record: Any, index: int, base: Path, out: Path, seen: set[str],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Sample:
    if not isinstance(record, dict):
        raise RecordError("<record>", f"expected an object, got {type(record).__name__}")
    if "__error__" in record:
        raise RecordError("<line>", record["__error__"])
    if fmt == "vstar":
        record = _vstar_boxes(record, base)
    raw: RawSample = CONVERTERS[fmt](record, index)
    if raw.id in seen:
        raise RecordError("id", f"duplicate id {raw.id!r}")
    name, data = _image_dest(raw.image, base, fmt)
    obj = {"id": raw.id, "image": _write_image(name, data, out / "images", max_pixels), "question": raw.question,
           "answers": raw.answers, "evidence_boxes": raw.evidence_boxes, "metric": METRIC[fmt],
           "meta": {"source": fmt, **raw.meta}}
    return Sample.from_json(obj)
