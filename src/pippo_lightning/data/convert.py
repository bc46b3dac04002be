"""Convert datasets between the ``.npy`` layout and shard directories, both ways, atomically.

A dataset root may hold splits (``root/train``, ``root/val``) or be one split itself; the
converter mirrors whichever it finds and copies ``manifest.json`` (if any) alongside.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pippo_lightning.checkpoints.atomic import atomic_directory
from pippo_lightning.data.npy_io import write_npy_sample
from pippo_lightning.data.shards import DEFAULT_SHARD_SIZE, ShardReader, ShardWriter, is_shard_dir
from pippo_lightning.data.sources import NpySource, has_samples, open_source
from pippo_lightning.errors import PippoError

#: Files next to the splits that travel with a converted dataset.
_SIDECARS = ("manifest.json",)


def split_dirs(root: Path) -> list[Path]:
    """The sample directories of a dataset: ``root`` itself, or its sub-directories with samples."""
    if has_samples(root):
        return [root]
    found = sorted(d for d in root.iterdir() if d.is_dir() and has_samples(d))
    if not found:
        raise FileNotFoundError(f"no samples (*.npy or a shard index) in {root} or its sub-folders")
    return found


def npy_to_shards(
    source: str | Path,
    target: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compact: bool = True,
    overwrite: bool = False,
) -> Path:
    """Pack ``.npy`` samples into shard directories (one per split). Returns ``target``."""
    source, target = Path(source), Path(target)
    with atomic_directory(target, overwrite=overwrite) as staging:
        for directory in split_dirs(source):
            files = open_source(directory)
            if not isinstance(files, NpySource):
                raise PippoError(f"{directory} is already a shard directory")
            out = staging / directory.relative_to(source)
            writer = ShardWriter(out, shard_size=shard_size, compact=compact)
            for index, name in enumerate(files.names()):
                writer.add(name, files.read(index))
            writer.close({"converted_from": str(directory.resolve())})
        _copy_sidecars(source, staging)
    return target


def shards_to_npy(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Unpack shard directories into ``.npy`` files named after the samples (original dtypes)."""
    source, target = Path(source), Path(target)
    with atomic_directory(target, overwrite=overwrite) as staging:
        for directory in split_dirs(source):
            if not is_shard_dir(directory):
                raise PippoError(f"{directory} holds .npy files, not shards")
            reader = ShardReader(directory)
            out = staging / directory.relative_to(source)
            out.mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(reader.names()):
                filename = name if name.endswith(".npy") else f"{name}.npy"
                write_npy_sample(out / Path(filename).name, reader.read(index, restore=True))
        _copy_sidecars(source, staging)
    return target


def _copy_sidecars(source: Path, staging: Path) -> None:
    for name in _SIDECARS:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
