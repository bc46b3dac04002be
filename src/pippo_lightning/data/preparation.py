"""Per-sample preparation shared by the dataset and the latent cache.

Both turn a raw sample into the same tensors: canonicalised and validated (:func:`prepare_sample`),
pixels resized into [-1, 1] with K scaled to match (:func:`pixels_at`), cameras as float32
(:func:`sample_cameras`). Keeping it below both is what lets the latent cache encode exactly the
tensors a batch would hold without importing the dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pippo_lightning.data.npy_io import read_npy_sample
from pippo_lightning.data.schema import (
    canonical_sample,
    check_sample,
    reference_camera_problem,
    with_reference_camera,
)
from pippo_lightning.geometry.cameras import scale_intrinsics, to_homogeneous_extrinsics

log = logging.getLogger(__name__)


def prepare_sample(raw: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """Canonicalise (aliases, arrays -> tensors), validate, and fill in a reference camera where
    the file has none (the original release's files): decoded from ``ref_cam_pose``, else the
    nearest target camera stands in (logged once per process; ``pippo-data validate`` lists
    every such file)."""
    sample = canonical_sample(raw)
    check_sample(sample, where)
    if "ref_cam_intrin" not in sample or "ref_cam_extrin" not in sample:
        _log_reference_fallback(sample, where)
    return with_reference_camera(sample)


_REFERENCE_FALLBACK_LOGGED = False


def _log_reference_fallback(sample: dict[str, Any], where: str | Path) -> None:
    """Say once per process that training stands in a target camera for a missing reference."""
    global _REFERENCE_FALLBACK_LOGGED
    problem = reference_camera_problem(sample, where)
    if problem is None or _REFERENCE_FALLBACK_LOGGED:
        return
    _REFERENCE_FALLBACK_LOGGED = True
    log.warning(
        "%s (further files without a reference camera are not reported here; "
        "`pippo-data validate` lists them all)",
        problem,
    )


def load_sample(path: str | Path) -> dict[str, Any]:
    """Read one ``.npy`` sample file, canonicalised and validated (raises SampleError).

    Uses the restricted unpickler of :mod:`.npy_io`: only arrays, tensors and plain values load.
    """
    return prepare_sample(read_npy_sample(path), path)


def resize_images(images: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of [N, C, h, w] (a no-op at the same size)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(
        images, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )


def pixels_at(images: Tensor, anchors: Tensor, intrinsics: Tensor, size: int) -> dict[str, Tensor]:
    """Images/anchors [N, 3, h, w] (0-255) resized to size x size in [-1, 1], K scaled to match.

    The one place pixels are resized, shared by the dataset and the latent cache so cached
    latents encode exactly the tensors a batch would hold.
    """
    height, width = images.shape[-2:]
    return {
        "images": to_unit_range(resize_images(as_float(images), size, size)),
        "anchor": to_unit_range(resize_images(as_float(anchors), size, size)),
        "intrinsics": scale_intrinsics(intrinsics, size / width, size / height),
    }


def as_float(x: Tensor) -> Tensor:
    return x.to(torch.float32)


def to_unit_range(pixels: Tensor) -> Tensor:
    """0-255 values -> [-1, 1] (the range the compressors and the diffusion loss expect)."""
    return (pixels / 127.5 - 1.0).clamp(-1.0, 1.0)


def sample_cameras(sample: dict[str, Any]) -> dict[str, Tensor]:
    """All-view cameras as float32 K [N, 3, 3] / E [N, 4, 4] (3x4 forms accepted), ref [1, ...]."""
    return {
        "intrinsics": as_float(sample["cam_intrin"][..., :3, :3]),
        "extrinsics": to_homogeneous_extrinsics(as_float(sample["cam_extrin"])),
        "ref_intrinsics": as_float(sample["ref_cam_intrin"][..., :3, :3]),
        "ref_extrinsics": to_homogeneous_extrinsics(as_float(sample["ref_cam_extrin"])),
    }
