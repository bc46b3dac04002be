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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling file and an atomic replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp files are private (0600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
