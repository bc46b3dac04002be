"""Where samples come from: a folder of ``.npy`` files or a shard directory, behind one interface.

A :class:`SampleSource` gives random access to raw sample dicts (as stored; see :mod:`.schema`),
a stable name per sample, and a cheap *fingerprint* that changes when the set of samples changes
(used to detect stale latent caches without reading every file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pippo_lightning.data.npy_io import read_npy_sample
from pippo_lightning.data.shards import ShardReader, is_shard_dir

SourceSpec = str | Path | Sequence[str | Path]


class SampleGenerator(Protocol):
    """A dataset made on demand (the synthetic studio): the data module asks it to write its
    samples under a root, and never needs to know what it is."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings; their hash names the default root."""
        ...

    def generate(self, root: Path) -> Path:
        """Write the samples under ``root`` (or reuse matching ones there); returns ``root``."""
        ...

    def is_generated(self, root: Path) -> bool:
        """Whether ``root`` already holds a finished generation."""
        ...


class SampleSource(Protocol):
    """Random access to raw samples."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> dict[str, Any]:
        """The raw dict of sample ``index`` (raises SampleError if unreadable)."""
        ...

    def describe(self, index: int) -> str:
        """Where sample ``index`` lives, for error messages."""
        ...

    def names(self) -> list[str]:
        """Stable identifiers of all samples, in index order."""
        ...

    def fingerprint(self) -> str:
        """Changes whenever the samples change (cheap: no file contents read)."""
        ...


class NpySource:
    """Per-sample ``.npy`` files (the original layout); names are paths relative to ``root``."""

    def __init__(self, files: Sequence[str | Path], root: str | Path | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> dict[str, Any]:
        return read_npy_sample(self.files[index])

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def names(self) -> list[str]:
        if self.root is None:
            return [f.name for f in self.files]
        return [str(f.relative_to(self.root)) for f in self.files]

    def fingerprint(self) -> str:
        # Names and sizes, not mtimes: copying a dataset to another disk must not invalidate it.
        digest = hashlib.sha1()
        for name, path in zip(self.names(), self.files):
            digest.update(f"{name}:{path.stat().st_size};".encode())
        return f"npy-{len(self.files)}-{digest.hexdigest()[:16]}"


class ShardSource:
    """A shard directory (see :mod:`.shards`)."""

    def __init__(self, directory: str | Path) -> None:
        self.reader = ShardReader(directory)
        self.directory = Path(directory)

    def __len__(self) -> int:
        return len(self.reader)

    def read(self, index: int) -> dict[str, Any]:
        return self.reader.read(index)

    def describe(self, index: int) -> str:
        return self.reader.describe(index)

    def names(self) -> list[str]:
        return self.reader.names()

    def fingerprint(self) -> str:
        # Every conversion draws a new dataset_id, so rewriting the shards changes it.
        return f"shards-{len(self.reader)}-{self.reader.dataset_id}"


def open_source(source: SourceSpec | SampleSource) -> SampleSource:
    """A directory of ``*.npy`` files, a shard directory, one ``.npy`` file, or a list of files."""
    if isinstance(source, NpySource | ShardSource):
        return source
    if isinstance(source, str | Path):
        root = Path(source)
        if is_shard_dir(root):
            return ShardSource(root)
        if root.is_file():
            return NpySource([root], root.parent)
        if not root.is_dir():
            raise FileNotFoundError(f"sample directory {root} does not exist")
        files = sorted(root.glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"no *.npy sample files (and no shard index) in {root}")
        return NpySource(files, root)
    files = [Path(f) for f in source]
    if not files:
        raise ValueError("empty list of sample files")
    return NpySource(files)


def sample_view_count(source: SampleSource, index: int = 0) -> int | None:
    """Target views of sample ``index`` (the leading axis of its ``image`` / ``video`` stack);
    None when it has neither. A shard sample is not read: its tensor header tells the shape."""
    if isinstance(source, ShardSource):
        for key in ("image", "video"):
            shape = source.reader.shape(index, key)
            if shape:
                return int(shape[0])
        return None
    sample = source.read(index)
    for key in ("image", "video"):
        if key in sample and getattr(sample[key], "shape", None):
            return int(sample[key].shape[0])
    return None


def has_samples(directory: str | Path) -> bool:
    """True if ``directory`` holds ``*.npy`` samples or a shard index."""
    directory = Path(directory)
    return is_shard_dir(directory) or any(directory.glob("*.npy"))
