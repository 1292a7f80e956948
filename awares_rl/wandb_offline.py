"""Read what a W&B run wrote to its offline transaction log (``run-<id>.wandb``), without wandb's
own reader (wandb 0.31 moved it into the Go core).

The format, as written by wandb-core (``core/internal/stream/store.go`` and
``core/pkg/leveldb/record.go`` in github.com/wandb/wandb):

- a 7-byte header: ident ``:W&B``, magic ``0xBEE1`` (uint16, little-endian), version ``0``;
- then a LevelDB log: 32 KiB blocks (the header counts toward the first block) packed with
  chunks, each a 7-byte chunk header -- checksum (uint32 LE), payload length (uint16 LE), chunk
  type (FULL=1, FIRST=2, MIDDLE=3, LAST=4) -- and the payload. The checksum is plain CRC-32
  (IEEE, ``zlib.crc32``) of the type byte plus the payload: the store selects
  ``CRCAlgoIEEE``, not LevelDB's masked CRC-32C. A block tail too short for a chunk header is
  zero-filled and skipped;
- each record (one FULL chunk, or FIRST, MIDDLE..., LAST) is a serialized
  ``wandb.proto.wandb_internal_pb2.Record``.

History and summary items name their key either by ``key`` or by a ``nested_key`` path (a logged
``wandb.Table`` becomes ``("episodes", "_type")``, ``("episodes", "path")``, ...); both are
turned back into nested dicts here.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_files(path: str | Path) -> list[Path]:
    """The ``run-<id>.wandb`` files at ``path`` (a file, or a folder searched recursively), oldest
    first: a resumed run writes one file per start, and their order is the run's order."""
    path = Path(path)
    if path.is_file():
        return [path]
    # latest-run is a symlink to one of the others: skip it so nothing is read twice.
    files = [f for f in path.rglob("run-*.wandb") if not f.parent.is_symlink()]
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file under {path}: was the W&B run offline?")
    return sorted(files, key=_start_order)


def _start_order(file: Path) -> tuple[str, int]:
    # Folder name: <mode>-<YYYYmmdd_HHMMSS>-<run id>[-<n>]; wandb adds -<n> when the name is taken.
    run_id = file.stem[len("run-") :]
    prefix, _, suffix = file.parent.name.rpartition(run_id)
    timespec = prefix.rstrip("-").rpartition("-")[2]
    return timespec, int(suffix.lstrip("-") or 0)


def _payloads(data: bytes, name: str) -> Iterator[bytes]:
    """Reassemble record payloads from the LevelDB-style chunks that follow the header."""
    if data[: len(HEADER)] != HEADER:
        raise ValueError(f"{name}: not a W&B transaction log (header {data[:7]!r})")
    pos, parts = len(HEADER), []
    while pos + CHUNK_HEADER_SIZE <= len(data):
        block_left = BLOCK_SIZE - pos % BLOCK_SIZE
        checksum, length, kind = struct.unpack_from("<IHB", data, pos)
        if block_left < CHUNK_HEADER_SIZE or (checksum, length, kind) == (0, 0, 0):
            pos += block_left  # zero-filled block tail
            continue
        payload = data[pos + CHUNK_HEADER_SIZE : pos + CHUNK_HEADER_SIZE + length]
        if len(payload) != length or zlib.crc32(bytes([kind]) + payload) != checksum:
            raise ValueError(f"{name}: corrupt or truncated chunk at byte {pos}")
        pos += CHUNK_HEADER_SIZE + length
        if kind in (FULL, FIRST):
            parts = [payload]
        elif kind in (MIDDLE, LAST):
            parts.append(payload)
        else:
            raise ValueError(f"{name}: unknown chunk type {kind} at byte {pos}")
        if kind in (FULL, LAST):
            yield b"".join(parts)


def iter_records(path: str | Path) -> Iterator[pb.Record]:
    """Every ``Record`` in the run file(s) at ``path``, in the order they were written."""
    for file in run_files(path):
        for payload in _payloads(file.read_bytes(), str(file)):
            record = pb.Record()
            record.ParseFromString(payload)
            yield record


def _history_value(item: pb.HistoryItem) -> Any:
    # wandb's Python SDK fills value_json; the typed fields are there for other writers.
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def _put(target: dict[str, Any], item: Any, value: Any) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _drop(target: dict[str, Any], item: Any) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


def read_offline_run(path: str | Path) -> list[dict[str, Any]]:
    """History rows of an offline run, one dict per logged step: the logged keys (nested keys as
    nested dicts, e.g. a table's ``{"_type": "table-file", "path": ..., "nrows": ...}``) with
    their JSON-decoded values, plus W&B's ``_step``, ``_runtime`` and ``_timestamp``."""
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item, _history_value(item))
            rows.append(row)
    return rows


def read_offline_summary(path: str | Path) -> dict[str, Any]:
    """The run's final summary: every summary update and removal applied in order."""
    summary: dict[str, Any] = {}
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                _put(summary, item, json.loads(item.value_json))
            for item in record.summary.remove:
                _drop(summary, item)
    return summary


def read_offline_config(path: str | Path) -> dict[str, Any]:
    """The run's config (from the run record and later config updates), without ``_wandb``."""
    config: dict[str, Any] = {}
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        update = record.run.config if kind == "run" else record.config if kind == "config" else None
        if update is None:
            continue
        for item in update.update:
            _put(config, item, json.loads(item.value_json))
        for item in update.remove:
            _drop(config, item)
    config.pop("_wandb", None)
    return config


__all__ = [
    "iter_records",
    "read_offline_config",
    "read_offline_run",
    "read_offline_summary",
    "run_files",
]
