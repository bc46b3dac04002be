"""Where prepared samples go: a folder of .npy files or a shard directory per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pippo_lightning.data.npy_io import write_npy_sample
from pippo_lightning.data.shards import ShardWriter


class SplitWriter(Protocol):
    """Receives the samples of one split."""

    def __call__(self, name: str, sample: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class NpyWriter:
    """Writes one ``.npy`` file per sample into a split directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, sample: dict[str, Any]) -> None:
        write_npy_sample(self.directory / f"{name}.npy", sample)

    def close(self) -> None:
        pass


class ShardSplitWriter:
    """Packs the samples of one split into a shard directory."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.writer = ShardWriter(directory, shard_size=shard_size)

    def __call__(self, name: str, sample: dict[str, Any]) -> None:
        self.writer.add(name, sample)

    def close(self) -> None:
        self.writer.close()


def split_writers(staging: Path, output_format: str, shard_size: int) -> dict[str, SplitWriter]:
    """One writer per split under ``staging``: shard directories or .npy folders."""
    if output_format == "shards":
        return {s: ShardSplitWriter(staging / s, shard_size) for s in ("train", "val")}
    return {s: NpyWriter(staging / s) for s in ("train", "val")}
