"""Read and write the original per-sample ``.npy`` files (``np.save`` of a dict) safely.

``np.load(..., allow_pickle=True)`` runs arbitrary pickle code: a crafted file executes whatever
it likes. The reader here parses the ``.npy`` header itself and unpickles the dict with an
allow-list of constructors (numpy arrays and dtypes, torch tensors, ``OrderedDict``), so a garbage
or hostile file is a :class:`~pippo_lightning.data.schema.SampleError`, never code execution or a
crash. Torch tensors pickled inside the dict carry their storage as bytes in torch's own format;
those bytes are read weights-only (``checkpointing.load_torch_file``) for the same reason.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pippo_lightning.checkpoints.atomic import atomic_write_bytes
from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.data.schema import SampleError

#: (module, name) pairs a sample pickle may reference. numpy moved its internals from
#: ``numpy.core`` to ``numpy._core`` in 2.0; files from either version are accepted.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
    }
)


def _load_storage_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` that refuses code in the bytes."""
    return load_torch_file(io.BytesIO(data), map_location=None)


class _SampleUnpickler(pickle.Unpickler):
    """An unpickler that only builds arrays, tensors and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_bytes
        if (module, name) in _ALLOWED_GLOBALS or module.startswith("numpy.dtypes"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: sample files may only hold arrays, tensors, "
            "numbers, strings, lists and dicts"
        )


def read_npy_value(path: str | Path) -> Any:
    """The object stored in a ``.npy`` file: a dict for sample files, else an array.

    Raises :class:`SampleError` (naming the file) for anything unreadable.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return _read(stream)
    except SampleError:
        raise
    except Exception as error:  # truncated, not npy, bad pickle, hostile pickle: all one kind
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise SampleError(f"{path}: cannot read the sample file: {reason}") from error


def _read(stream: io.BufferedReader) -> Any:
    version = np.lib.format.read_magic(stream)
    readers: dict[tuple[int, int], Callable[[Any], tuple[Any, bool, np.dtype]]] = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = readers[version](stream)
    if dtype.hasobject:
        value = _SampleUnpickler(stream).load()
        # np.save of a dict stores a 0-d object array; the unpickled payload is that array.
        if isinstance(value, np.ndarray) and value.dtype == object and value.shape == ():
            return value.item()
        return value
    count = int(np.prod(shape)) if shape else 1
    data = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)
    if data.size != count:
        raise ValueError(f"truncated array data: expected {count} values, found {data.size}")
    return data.reshape(shape, order="F" if fortran else "C")


def read_npy_sample(path: str | Path) -> dict[str, Any]:
    """The raw dict of a sample file (values as stored: tensors, arrays, strings...)."""
    value = read_npy_value(path)
    if not isinstance(value, dict):
        found = (
            f"array {list(value.shape)} {value.dtype}"
            if isinstance(value, np.ndarray)
            else type(value).__name__
        )
        raise SampleError(f"{path}: expected a pickled dict (np.save of a dict), found {found}")
    return value


def write_npy_sample(path: str | Path, sample: Mapping[str, Any]) -> None:
    """Write ``sample`` in the original layout (a 0-d object array holding the dict), atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.array(dict(sample), dtype=object), allow_pickle=True)
    atomic_write_bytes(path, buffer.getvalue())
