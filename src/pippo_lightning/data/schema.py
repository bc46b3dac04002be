"""The per-sample file format (the original Pippo layout) and its validation.

A sample file is ``np.save(path, dict, allow_pickle=True)`` of a dict whose values are torch
tensors or numpy arrays. T is the original's frame axis and must be 1. NV views share H x W;
the reference view has its own RH x RW. Images and anchors hold 0-255 values (float or uint8);
cameras follow :mod:`pippo_lightning.geometry.cameras` (OpenCV, world->camera, intrinsics in pixels
of the stored image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

Dim = int | str
Shape = tuple[Dim, ...]


class SampleError(ValueError):
    """A sample file does not match the schema; the message names the file and the key."""


@dataclass(frozen=True)
class KeySpec:
    """Accepted shapes (alternatives; symbols must agree across keys) and value kind."""

    shapes: tuple[Shape, ...]
    pixels: bool = False  # 0-255 images: uint8 allowed besides floating point
    required: bool = True
    description: str = ""


SAMPLE_KEYS: dict[str, KeySpec] = {
    "image": KeySpec((("NV", 1, 3, "H", "W"),), pixels=True, description="target views, 0-255"),
    "ref_image": KeySpec(
        ((1, 1, 3, "RH", "RW"),), pixels=True, description="reference view, 0-255"
    ),
    "cam_pose": KeySpec((("NV", 1, 16),), description="camera MLP input per view"),
    "ref_cam_pose": KeySpec(((1, 1, 16),), description="camera MLP input, reference"),
    "kpts": KeySpec((("NV", 1, 3, "H", "W"),), pixels=True, description="spatial anchor, 0-255"),
    "ref_kpts": KeySpec(((1, 1, 3, "RH", "RW"),), pixels=True, description="anchor, reference"),
    "cam_intrin": KeySpec((("NV", 3, 3), ("NV", 3, 4)), description="intrinsics, pixels"),
    "cam_extrin": KeySpec((("NV", 4, 4), ("NV", 3, 4)), description="world->camera"),
    "ref_cam_intrin": KeySpec(((1, 3, 3), (1, 3, 4)), description="reference intrinsics"),
    "ref_cam_extrin": KeySpec(((1, 4, 4), (1, 3, 4)), description="reference world->camera"),
    "plucker": KeySpec(
        (("NV", 1, 6, "H", "W"),), required=False, description="(d, o x d) per pixel"
    ),
    "ref_plucker": KeySpec(((1, 1, 6, "RH", "RW"),), required=False, description="reference rays"),
    "head_center": KeySpec(((3,),), required=False, description="world position of the head"),
    "head_forward": KeySpec(((3,),), required=False, description="world facing direction"),
}

#: Older files call the target views "video".
KEY_ALIASES: dict[str, str] = {"video": "image"}


def canonical_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Apply key aliases and turn numpy arrays into tensors (other values pass through)."""
    sample = {k: (_numeric_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in raw.items()}
    for alias, key in KEY_ALIASES.items():
        if key not in sample and alias in sample:
            sample[key] = sample.pop(alias)
    return sample


def _numeric_tensor(array: np.ndarray) -> Any:
    """Numeric arrays become tensors; anything else (strings, objects) is left alone."""
    return torch.from_numpy(array) if array.dtype.kind in "biuf" else array


def check_sample(
    sample: Mapping[str, Any], path: str | Path, required: tuple[str, ...] = ()
) -> None:
    """Raise :class:`SampleError` if ``sample`` does not follow :data:`SAMPLE_KEYS`.

    Checks presence of required keys (plus ``required``), shapes (with symbolic sizes consistent
    across keys), dtypes and finiteness. ``sample`` should be :func:`canonical_sample`'d.
    """
    sizes: dict[str, int] = {}
    for key, spec in SAMPLE_KEYS.items():
        if key not in sample:
            if spec.required or key in required:
                aliases = [a for a, k in KEY_ALIASES.items() if k == key]
                also = f" (or {', '.join(repr(a) for a in aliases)})" if aliases else ""
                raise SampleError(
                    f"{path}: missing key {key!r}{also} ({spec.description}); "
                    f"found keys {sorted(sample)}"
                )
            continue
        _check_value(sample[key], key, spec, sizes, path)


def _check_value(
    value: Any, key: str, spec: KeySpec, sizes: dict[str, int], path: str | Path
) -> None:
    if not isinstance(value, torch.Tensor | np.ndarray):
        raise SampleError(
            f"{path}: key {key!r}: expected a tensor or array, found {type(value).__name__}"
        )
    tensor = torch.as_tensor(value)
    shape = tuple(tensor.shape)
    if not any(_bind(pattern, shape, sizes) for pattern in spec.shapes):
        expected = " or ".join(_describe(pattern, sizes) for pattern in spec.shapes)
        raise SampleError(f"{path}: key {key!r}: expected shape {expected}, found {list(shape)}")
    allowed = "floating point or uint8" if spec.pixels else "floating point"
    if not (tensor.is_floating_point() or (spec.pixels and tensor.dtype == torch.uint8)):
        raise SampleError(f"{path}: key {key!r}: expected dtype {allowed}, found {tensor.dtype}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise SampleError(f"{path}: key {key!r}: {bad} non-finite values (nan/inf)")


def _bind(pattern: Shape, shape: tuple[int, ...], sizes: dict[str, int]) -> bool:
    """Match ``shape`` against ``pattern``; on success record new symbol sizes in ``sizes``."""
    if len(pattern) != len(shape):
        return False
    new: dict[str, int] = {}
    for dim, size in zip(pattern, shape):
        if isinstance(dim, int):
            if dim != size:
                return False
        elif sizes.get(dim, new.get(dim, size)) != size:
            return False
        else:
            new[dim] = size
    sizes.update(new)
    return True


def _describe(pattern: Shape, sizes: dict[str, int]) -> str:
    """e.g. ``[NV=24, 1, 3, H=64, W=64]`` (symbols shown with the sizes fixed by earlier keys)."""
    parts = [f"{d}={sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in pattern]
    return f"[{', '.join(parts)}]"
