"""Checkpoint files: atomic writes, validity checks, and finding where to resume.

Loading goes through :func:`pippo_lightning.checkpoints.loading.load_torch_file` (weights-only).

A checkpoint is written to a temporary name in the same directory and renamed over the final
name, so a crash or a full disk mid-write never leaves a half-written `last.ckpt` behind. At load
time a damaged file is reported by name instead of as an unpickling traceback.
"""

from __future__ import annotations

import errno
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pippo_lightning.checkpoints.atomic import atomic_path
from pippo_lightning.checkpoints.loading import CorruptCheckpointError, load_torch_file
from pippo_lightning.errors import PippoError

log = logging.getLogger(__name__)

#: what `ckpt_path` may be set to for "the newest valid checkpoint of this run, if any"
AUTO = "auto"


class CheckpointWriteError(PippoError):
    """A checkpoint could not be written for lack of space; the previous one is untouched."""


#: errno values that mean "the storage cannot take more bytes" (not a bug, not a bad path)
_NO_SPACE = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (file system or process file-size limit)",
}


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` is not a loadable checkpoint, or None when it looks whole.

    torch.save writes a zip archive with a CRC per member; checking the CRCs reads the file
    once without unpickling it, which catches truncation and flipped bytes cheaply.
    """
    path = Path(path)
    if path.is_dir():
        return sharded_checkpoint_problem(path)
    if not path.is_file():
        return "no such file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a complete checkpoint archive ({err})"
    if bad is not None:
        return f"damaged member {bad!r} (CRC mismatch)"
    if not any(name.endswith("data.pkl") for name in names):
        return "no data.pkl in the archive"
    return None


#: what Lightning's ModelParallelStrategy writes next to the shards: everything but the weights
#: and optimizer states (step, loops, callbacks), written last by rank 0
SHARDED_META = "meta.pt"


def sharded_checkpoint_problem(path: Path) -> str | None:
    """Why the sharded checkpoint directory `path` is incomplete, or None.

    torch.distributed.checkpoint writes each rank's shard file, then `.metadata` (which names
    every shard file and the byte range each tensor occupies in it); Lightning then writes
    `meta.pt`. Each must be there, and every shard file at least as long as `.metadata` says.
    """
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / ".metadata").is_file():
        return "sharded checkpoint without .metadata (its save did not finish)"
    meta_problem = checkpoint_problem(path / SHARDED_META)
    if meta_problem:
        return f"sharded checkpoint with a bad {SHARDED_META}: {meta_problem}"
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # unpickling errors come in many types
        return f"sharded checkpoint with an unreadable .metadata ({err})"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"sharded checkpoint without its shard {name}"
        if shard.stat().st_size < size:
            return f"shard {name} is truncated ({shard.stat().st_size} of {size} bytes)"
    return None


def is_valid_checkpoint(path: str | Path) -> bool:
    return checkpoint_problem(path) is None


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes via a temporary file + rename and checks files at load.

    `remove_checkpoint` never deletes the last valid checkpoint of a directory, so a keep-last-N
    policy cannot leave a run with nothing to resume from.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        try:
            with atomic_path(path, fsync=True) as temporary:
                with open(temporary, "wb") as handle:
                    torch.save(checkpoint, handle)
                problem = checkpoint_problem(temporary)
                if problem:
                    raise CorruptCheckpointError(
                        f"{path}: freshly written checkpoint is bad: {problem}"
                    )
        except Exception as err:
            reason = _no_space_reason(err)
            if reason is None:
                raise
            # the partial file is gone by now, so the message reports the space really left
            raise CheckpointWriteError(_no_space_message(path, reason)) from err

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at `path`, always loaded weights-only (`load_torch_file`): resuming
        from a downloaded file must not run its code, whatever `weights_only` Lightning got."""
        if weights_only is False:
            log.warning("loading %s weights-only although weights_only=False was asked", path)
        problem = checkpoint_problem(path)
        if problem:
            raise CorruptCheckpointError(f"checkpoint {path} cannot be loaded: {problem}")
        try:
            return load_torch_file(path, map_location=map_location)
        except PippoError:
            raise  # already names the file and what is wrong
        except Exception as err:  # unpickling errors come in many types
            raise CorruptCheckpointError(f"checkpoint {path} cannot be loaded: {err}") from err

    def remove_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        others = [p for p in path.parent.glob("*.ckpt") if p != path and is_valid_checkpoint(p)]
        if not others and is_valid_checkpoint(path):
            log.warning("keeping %s: it is the only valid checkpoint left in %s", path, path.parent)
            return
        super().remove_checkpoint(path)  # recursive: sharded checkpoints are directories


def _no_space_reason(err: BaseException) -> str | None:
    """Why `err` means the storage is full, or None when it is another failure.

    torch.save reports a full disk as a RuntimeError of its zip writer ("unexpected pos ...")
    raised while handling the OSError(ENOSPC) of the write underneath, so the whole chain of
    causes and contexts is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return _NO_SPACE[current.errno]
        current = current.__cause__ or current.__context__
    return None


def _no_space_message(path: Path, reason: str) -> str:
    """One line: which file, why, how much room is left, and what survived."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.2f} MiB free in {path.parent}"
    except OSError:
        free = f"free space in {path.parent} unknown"
    kept = (
        f"the previous {path.name} is intact"
        if is_valid_checkpoint(path)
        else f"the checkpoints already in {path.parent} are untouched"
    )
    return (
        f"cannot write checkpoint {path}: {reason}; {free}; the partial file was removed and "
        f"{kept}. Free space (or set callbacks.model_checkpoint.dirpath elsewhere, or keep fewer "
        "checkpoints) and rerun in the same run directory (auto_resume=true)"
    )


def find_resume_checkpoint(directory: str | Path) -> Path | None:
    """The newest valid checkpoint (`*.ckpt`, a file or a sharded directory, by modification
    time) under `directory`.

    Damaged files are skipped with a warning, so a crash while the newest was being written
    (or a corrupted newest file) falls back to the previous good one. None: nothing to resume.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = sorted(directory.glob("*.ckpt"), key=_newest_first_key)
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log.warning("skipping checkpoint %s: %s", candidate, problem)
    return None


def _newest_first_key(path: Path) -> tuple[float, int]:
    # a sharded checkpoint is as new as its meta.pt (written last; a directory's own mtime
    # follows its entries, not their contents)
    written = path / SHARDED_META if (path / SHARDED_META).is_file() else path
    # last.ckpt and the step file of the same save share an mtime; prefer last.ckpt then
    return (-written.stat().st_mtime, 0 if path.name == "last.ckpt" else 1)


def resolve_ckpt_path(
    ckpt_path: str | None, auto_resume: bool, checkpoint_dir: str | Path
) -> str | None:
    """What to hand `trainer.fit(ckpt_path=...)`: an explicit path, or with `auto_resume` (or
    `ckpt_path=auto`) the newest valid checkpoint of the run (None: start fresh)."""
    if ckpt_path not in (None, AUTO):
        problem = checkpoint_problem(ckpt_path)
        if problem:
            raise CorruptCheckpointError(f"ckpt_path={ckpt_path}: {problem}")
        return str(ckpt_path)
    if ckpt_path == AUTO or auto_resume:
        found = find_resume_checkpoint(checkpoint_dir)
        if found is None:
            log.info("auto_resume: no valid checkpoint under %s, starting fresh", checkpoint_dir)
            return None
        log.info("auto_resume: resuming from %s", found)
        return str(found)
    return None


def read_callback_state(ckpt_path: str | Path, key: str) -> Any:
    """A value the resume callback stored in a checkpoint (None where absent), read before the
    trainer exists, e.g. the W&B run id the logger must be built with."""
    path = Path(ckpt_path)
    if path.is_dir():
        # a sharded checkpoint keeps everything but the weights and optimizer in meta.pt
        path = path / SHARDED_META
        if not path.is_file():
            return None
        checkpoint = load_torch_file(path)
    else:
        checkpoint = load_torch_file(path, mmap=True)
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and key in state:
            return state[key]
    return None
