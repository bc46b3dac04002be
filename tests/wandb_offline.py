"""Reading an offline W&B run back (test helper): what a run logged, without syncing it anywhere.

An offline W&B run is a `run-<id>.wandb` file: a LevelDB-style log (32 KiB blocks of checksummed
chunks) of protobuf `Record`s.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- offline runs
# An offline W&B run is a `run-<id>.wandb` file: a LevelDB-style log (32 KiB blocks of
# checksummed chunks) of protobuf `Record`s. Reading it back lets tests and users inspect what a
# run logged without syncing it anywhere.
_BLOCK = 32768
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32c (masked), length, chunk type
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline W&B run recorded: id, config, history rows, the final summary, and the
    group, job type and tags it was started with."""

    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)


def _log_records(data: bytes) -> list[bytes]:
    """Reassemble the records of a W&B transaction log."""
    ident, magic, _ = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B transaction log (bad header)")
    records, pending, pos = [], b"", _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # block trailer padding
            pos += room
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += room  # zero padding up to the next block
            continue
        start = pos + _CHUNK_HEADER.size
        chunk = data[start : start + length]
        pos = start + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
            pending = b""
    return records


def read_offline_run(path: str | Path) -> OfflineRun:
    """Read an offline run: a `.wandb` file, an `offline-run-*` dir, or a dir holding `wandb/`.

    With several runs under `path` the newest is read.
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    if path.is_file():
        files = [path]
    else:  # an offline-run-* folder itself, or any folder above one
        files = sorted(path.glob("run-*.wandb")) or sorted(
            path.glob("**/offline-run-*/run-*.wandb")
        )
    if not files:
        raise FileNotFoundError(f"no offline W&B run (run-*.wandb) under {path}")
    log_file = files[-1]
    run = OfflineRun(run_id="", path=log_file)
    for raw in _log_records(log_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.group, run.job_type = record.run.run_group, record.run.job_type
            run.tags = list(record.run.tags)
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.rows.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
    return run


def _items(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def offline_artifacts(path: str | Path) -> list[dict[str, Any]]:
    """The artifacts an offline W&B run recorded (name, type, files with their local paths),
    read from its transaction log like :func:`read_offline_run`."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("**/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run (run-*.wandb) under {path}")
    found = []
    for raw in _log_records(files[-1].read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "artifact":
            continue
        art = record.artifact
        found.append(
            {
                "name": art.name,
                "type": art.type,
                "files": {e.path: e.local_path for e in art.manifest.contents},
                "metadata": json.loads(art.metadata or "{}"),
            }
        )
    return found
