"""Experiment loggers. W&B runs offline unless the user has configured an API key."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger

from pippo_lightning.extras import require
from pippo_lightning.tracking import resolve_log_model

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_credentials_present() -> bool:
    """True when W&B could authenticate without a prompt (API key in env or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """`auto` → `online` with credentials, else `offline`; WANDB_MODE in the env wins."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        # Lightning's offline WandbLogger sets WANDB_MODE=dryrun (W&B's old name for offline)
        # in its process, which DDP children and later multirun jobs then inherit.
        return "offline" if env_mode == "dryrun" else env_mode
    if mode == "auto":
        return "online" if wandb_credentials_present() else "offline"
    return mode


def wandb_logger(
    save_dir: str | Path,
    project: str = "pippo_lightning",
    name: str | None = None,
    mode: WandbMode = "auto",
    run_id: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger whose files land under `save_dir` and which never asks for a login.

    Offline runs are written to `<save_dir>/wandb/offline-run-*` and can be uploaded later
    with `wandb sync <that dir>`. ``log_model`` `auto`: checkpoints are logged as artifacts
    (aliases `latest`, `best`) when online (pippo_lightning.tracking.resolve_log_model).
    """
    require("wandb", "logger=wandb")
    resolved = resolve_wandb_mode(mode)
    if resolved not in {"online", "offline", "disabled"}:
        raise ValueError(
            f"logger.wandb.mode must be auto|online|offline|disabled, got {resolved!r}"
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # No prompt may ever block an unattended run.
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        save_dir=str(save_dir),
        project=project,
        name=name,
        id=run_id,
        offline=resolved == "offline",
        mode=resolved,
        tags=list(tags) if tags else None,
        log_model=resolve_log_model(log_model, resolved),
        **kwargs,
    )


def tensorboard_logger(save_dir: str | Path, name: str = "tensorboard", **kwargs: Any) -> Any:
    """Lightning's TensorBoardLogger, or one error naming the `tensorboard` extra if absent."""
    require("tensorboard", "logger=tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(save_dir), name=name, **kwargs)


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
