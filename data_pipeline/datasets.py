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
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from data_pipeline.formats import CONVERTERS, IMAGE_DIRS, METRIC, RawSample, RecordError
from data_pipeline.sample import Sample, SampleError, iter_jsonl, parse_line, write_jsonl

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
    path: str | Path, on_error: str = "fail", check_images: bool = True
) -> tuple[list[Sample], ConvertReport]:
    """Read and validate a Sample JSONL file; every error names ``file:line`` and the field."""
    _check_on_error(on_error)
    path, samples, report = Path(path), [], ConvertReport(path=Path(path))
    seen: set[str] = set()
    for lineno, line in iter_jsonl(path):
        where = f"{path}:{lineno}"
        try:
            s = parse_line(line, where)
            if s.id in seen:
                raise SampleError(where, "id", f"duplicate id {s.id!r}")
            if check_images and not s.image_path(path).is_file():
                raise SampleError(where, "image", f"file not found: {s.image_path(path)}")
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
        table = pq.read_table(f)
        for i, row in enumerate(table.to_pylist()):
            yield f"{f}:row {i}", row


def _iter_jsonl_records(src: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in iter_jsonl(src):
        where = f"{src}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, {"__error__": f"invalid JSON ({e.msg} at column {e.colno})"}


def _iter_json(src: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{src}:{e.lineno}", f"invalid JSON ({e.msg})") from e
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
        with Image.open(io.BytesIO(source)) as im:
            ext = (im.format or "png").lower().replace("jpeg", "jpg")
        return f"{hashlib.sha1(source).hexdigest()[:16]}.{ext}", source
    if isinstance(source, str):
        for sub in IMAGE_DIRS[fmt]:
            path = base / sub / source
            if path.is_file():
                rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
                return str(rel).replace("/", "__"), path
        raise RecordError("image", f"file {source!r} not found under {base} ({', '.join(IMAGE_DIRS[fmt][1:])})")
    raise RecordError("image", f"unsupported image value of type {type(source).__name__}")


def _write_image(name: str, data: Path | bytes, images_dir: Path) -> str:
    dest = images_dir / name
    if not dest.exists():
        if isinstance(data, bytes):
            dest.write_bytes(data)
        else:
            shutil.copyfile(data, dest)
    try:
        with Image.open(dest) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - any decoder error means an unusable image
        dest.unlink(missing_ok=True)
        raise RecordError("image", f"not a readable image ({type(e).__name__}: {e})") from e
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
    fmt: str, src: str | Path, out_dir: str | Path, on_error: str = "fail", split: str | None = None
) -> ConvertReport:
    """Convert a local benchmark to ``out_dir/<fmt>.jsonl`` + ``out_dir/images/``."""
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
            sample = _convert_one(fmt, record, index, base, out, seen)
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


def _convert_one(fmt: str, record: Any, index: int, base: Path, out: Path, seen: set[str]) -> Sample:
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
    obj = {"id": raw.id, "image": _write_image(name, data, out / "images"), "question": raw.question,
           "answers": raw.answers, "evidence_boxes": raw.evidence_boxes, "metric": METRIC[fmt],
           "meta": {"source": fmt, **raw.meta}}
    return Sample.from_json(obj)
