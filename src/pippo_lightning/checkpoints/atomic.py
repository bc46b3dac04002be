"""Publish directories and files atomically: write next to the target, then rename.

A reader (a training job, another worker, a second ``prepare``) never sees a half-written dataset:
either the old directory, or the complete new one. Renames are atomic only within one filesystem,
which is why the staging directory is a hidden sibling of the target, never under /tmp.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pippo_lightning.errors import PippoError


class OutputExistsError(PippoError):
    """The output directory exists and overwriting was not asked for."""


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``target`` when the block succeeds.

    On an exception the staging directory is removed and ``target`` is left untouched.
    An existing non-empty ``target`` is an error unless ``overwrite``; then it is swapped out by
    rename and deleted only after the new directory is in place.
    """
    target = Path(target)
    if _non_empty(target) and not overwrite:
        raise OutputExistsError(
            f"{target} already exists; choose another output directory or pass --overwrite"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    # mkdtemp makes the directory private (0700); a dataset should get the usual permissions.
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        _replace(staging, target)
    finally:
        # A no-op after a successful rename; removes the partial output after a failure.
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    """The process umask (reading it means setting it; restore at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _replace(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an old ``target`` is renamed aside first, then deleted."""
    old = None
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; when the block succeeds it replaces
    ``path`` in one rename, so a reader sees the old file or the new one, never half of one.

    The one atomic file writer (images, videos, samples, shards, checkpoints). The temporary
    keeps ``path``'s suffix (writers that pick a format by suffix see the right one). ``fsync``:
    flush the data to disk before the rename and the rename after it (checkpoints: a crash must
    not leave a renamed but empty file). On an exception the temporary is removed and ``path``
    is untouched; raising inside the block (e.g. a check of the written file) aborts the swap.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp files are private (0600)
        if fsync:
            _fsync(temporary)
        os.replace(temporary, path)
        if fsync:
            _fsync(path.parent)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _fsync(path: Path) -> None:
    """Make a file's data (or a directory's entries) durable; a no-op where it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically and durably: a crash or a full disk leaves either
    the old file or the new one."""
    import torch

    with atomic_path(path, fsync=True) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)


def replace_directory(tmp: Path, path: Path) -> None:
    """Make the fully written directory `tmp` the checkpoint `path` by renames only (a sharded
    checkpoint's atomic write; the previous one is deleted once the new one is in place)."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.is_dir():
        os.replace(path, old)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
