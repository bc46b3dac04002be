"""Shard directories: the sample format that scales to millions of samples.

One directory holds fixed-size shard files (safetensors) and an index::

    split_dir/index.json              format, version, dataset_id, shard_size, shards[{file, count}]
    split_dir/shard-00000.safetensors tensors "<local index>/<key>", e.g. "000003/image"
    split_dir/shard-00001.safetensors ...

Each shard's safetensors metadata holds, per sample, its name and its non-tensor entries (JSON).
Why this layout:

- thousands of files instead of millions (filesystems and object stores like that better);
- a sample is read by memory-mapping only its own tensors (``safe_open``), no unpickling, so
  random access is cheap and loading untrusted data is safe;
- the dataset is map-style: a ``DistributedSampler`` (Lightning adds one under DDP) gives every
  rank a disjoint set of indices, and the DataLoader gives each worker disjoint batches, so no
  sample is read twice per epoch; handles are opened lazily per process, after the fork.

Pixel-valued float keys holding whole numbers in [0, 255] are stored as uint8 (4x smaller,
lossless); the original dtype is recorded and restored on conversion back to ``.npy``.
"""

from __future__ import annotations

import bisect
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from pippo_lightning.checkpoints.atomic import atomic_write_bytes
from pippo_lightning.data.schema import SAMPLE_KEYS, SampleError

FORMAT_NAME = "pippo_lightning.shards"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
DEFAULT_SHARD_SIZE = 256
_PIXEL_KEYS = frozenset({"video", *(k for k, spec in SAMPLE_KEYS.items() if spec.pixels)})


def is_shard_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory with a shard index."""
    return (Path(path) / INDEX_FILE).is_file()


def _tensor_name(local: int, key: str) -> str:
    return f"{local:06d}/{key}"


def _encode_value(key: str, value: Any, compact: bool) -> tuple[Tensor | None, dict[str, Any]]:
    """(tensor to store or None, metadata). Metadata records how to restore the value."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        tensor, container = torch.from_numpy(np.ascontiguousarray(value)), "numpy"
    elif isinstance(value, Tensor):
        tensor, container = value.detach().cpu(), "torch"
    else:
        try:
            json.dumps(value)
        except TypeError as error:
            raise SampleError(
                f"key {key!r}: cannot store a {type(value).__name__} in a shard "
                "(only tensors, arrays and JSON values)"
            ) from error
        return None, {"json": value}
    info: dict[str, Any] = {"container": container}
    if compact and key in _PIXEL_KEYS and tensor.is_floating_point() and _whole_bytes(tensor):
        info["dtype"] = str(tensor.dtype).removeprefix("torch.")
        tensor = tensor.to(torch.uint8)
    # safetensors refuses views into shared storage: every stored tensor owns its memory.
    return tensor.contiguous().clone(), info


def _whole_bytes(tensor: Tensor) -> bool:
    """All values are whole numbers in [0, 255] (so uint8 holds them exactly)."""
    if tensor.numel() == 0:
        return True
    return bool((tensor == tensor.round()).all() and tensor.min() >= 0 and tensor.max() <= 255)


class ShardWriter:
    """Append samples; every ``shard_size`` of them become one shard file. Call :meth:`close`.

    Writes into ``directory`` as it goes: use it inside
    :func:`~pippo_lightning.checkpoints.atomic.atomic_directory` for an atomic result.
    """

    def __init__(
        self, directory: str | Path, shard_size: int = DEFAULT_SHARD_SIZE, compact: bool = True
    ) -> None:
        if shard_size < 1:
            raise SampleError(f"shard_size must be >= 1, got {shard_size}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.compact = shard_size, compact
        self.shards: list[dict[str, Any]] = []
        self._tensors: dict[str, Tensor] = {}
        self._entries: list[dict[str, Any]] = []
        self.count = 0

    def add(self, name: str, sample: Mapping[str, Any]) -> None:
        """Add one sample (a dict as in the ``.npy`` layout) under a unique ``name``."""
        local = len(self._entries)
        entry: dict[str, Any] = {"name": name, "keys": {}}
        for key, value in sample.items():
            tensor, info = _encode_value(str(key), value, self.compact)
            if tensor is not None:
                self._tensors[_tensor_name(local, str(key))] = tensor
            entry["keys"][str(key)] = info
        self._entries.append(entry)
        self.count += 1
        if len(self._entries) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._entries:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        metadata = {"samples": json.dumps(self._entries)}
        save_file(self._tensors, str(self.directory / name), metadata=metadata)
        self.shards.append({"file": name, "count": len(self._entries)})
        self._tensors, self._entries = {}, []

    def close(self, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the last shard and the index (last: a directory with an index is complete)."""
        self._flush()
        index = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dataset_id": uuid.uuid4().hex,
            "shard_size": self.shard_size,
            "count": self.count,
            "shards": self.shards,
            **dict(extra or {}),
        }
        atomic_write_bytes(
            self.directory / INDEX_FILE, (json.dumps(index, indent=1) + "\n").encode()
        )
        return self.directory


def read_index(directory: str | Path) -> dict[str, Any]:
    """The validated index of a shard directory (raises :class:`SampleError` when broken)."""
    path = Path(directory) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SampleError(f"{path}: cannot read the shard index: {error}") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT_NAME:
        raise SampleError(f"{path}: not a shard index (format {FORMAT_NAME!r} expected)")
    if index.get("version") != FORMAT_VERSION:
        raise SampleError(
            f"{path}: shard format version {index.get('version')}, expected {FORMAT_VERSION}"
        )
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("count"), int)
        for s in shards
    ):
        raise SampleError(f"{path}: 'shards' must be a list of {{file, count}}")
    total = sum(s["count"] for s in shards)
    if index.get("count") != total:
        raise SampleError(
            f"{path}: index says {index.get('count')} samples but its shards hold {total}"
        )
    return index


class ShardReader:
    """Random access to the samples of a shard directory; safe to share across fork/workers."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        self.files = [self.directory / s["file"] for s in self.index["shards"]]
        counts = [s["count"] for s in self.index["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).tolist()  # [S + 1]
        self._entries: dict[int, list[dict[str, Any]]] = {}
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.index["count"])

    @property
    def dataset_id(self) -> str:
        return str(self.index["dataset_id"])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, index within the shard) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def describe(self, index: int) -> str:
        """Where sample ``index`` lives, for messages: ``<shard file>#<local> (<name>)``."""
        shard, local = self.locate(index)
        try:
            name = self.entries(shard)[local]["name"]
        except SampleError:
            name = "?"
        return f"{self.files[shard]}#{local} ({name})"

    def name(self, index: int) -> str:
        shard, local = self.locate(index)
        return str(self.entries(shard)[local]["name"])

    def names(self) -> list[str]:
        return [e["name"] for shard in range(len(self.files)) for e in self.entries(shard)]

    def _handle(self, shard: int) -> Any:
        if os.getpid() != self._pid:
            # A forked worker must not reuse the parent's handles: reopen in this process.
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            path = self.files[shard]
            try:
                self._handles[shard] = safe_open(str(path), framework="pt")
            except Exception as error:  # missing, truncated or not safetensors
                raise SampleError(f"{path}: cannot open the shard: {error}") from error
        return self._handles[shard]

    def entries(self, shard: int) -> list[dict[str, Any]]:
        """Per-sample metadata of ``shard`` (names, non-tensor values, stored dtypes)."""
        if shard not in self._entries:
            path = self.files[shard]
            try:
                entries = json.loads(self._handle(shard).metadata()["samples"])
            except SampleError:
                raise
            except Exception as error:
                raise SampleError(f"{path}: shard metadata unreadable: {error}") from error
            expected = self.index["shards"][shard]["count"]
            if not isinstance(entries, list) or len(entries) != expected:
                found = len(entries) if isinstance(entries, list) else type(entries).__name__
                raise SampleError(f"{path}: index says {expected} samples, shard holds {found}")
            self._entries[shard] = entries
        return self._entries[shard]

    def read(self, index: int, restore: bool = False) -> dict[str, Any]:
        """Sample ``index`` as a dict. ``restore`` gives back the stored dtypes and containers
        (numpy arrays stay numpy, float pixels compacted to uint8 become float again)."""
        shard, local = self.locate(index)
        entry = self.entries(shard)[local]
        handle = self._handle(shard)
        sample: dict[str, Any] = {}
        for key, info in entry["keys"].items():
            if "json" in info:
                sample[key] = info["json"]
                continue
            try:
                tensor = handle.get_tensor(_tensor_name(local, key))
            except Exception as error:
                raise SampleError(
                    f"{self.files[shard]}#{local}: key {key!r}: cannot read the tensor: {error}"
                ) from error
            if restore:
                if "dtype" in info:
                    tensor = tensor.to(getattr(torch, info["dtype"]))
                sample[key] = tensor.numpy() if info.get("container") == "numpy" else tensor
            else:
                sample[key] = tensor
        return sample

    def shape(self, index: int, key: str) -> tuple[int, ...] | None:
        """Shape of tensor ``key`` of sample ``index`` from the shard header alone (no data
        read); None when the sample has no such tensor."""
        shard, local = self.locate(index)
        info = self.entries(shard)[local]["keys"].get(key)
        if info is None or "json" in info:
            return None
        try:
            return tuple(self._handle(shard).get_slice(_tensor_name(local, key)).get_shape())
        except Exception as error:
            raise SampleError(
                f"{self.files[shard]}#{local}: key {key!r}: cannot read the tensor: {error}"
            ) from error

    def __getstate__(self) -> dict[str, Any]:
        # Handles hold mmaps; workers started with "spawn" reopen them on first use.
        return {**self.__dict__, "_handles": {}}
