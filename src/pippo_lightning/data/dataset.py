"""Multi-view samples read from per-subject files, in the batch layout the models train on.

Batch contract (per item; a DataLoader adds the leading batch axis B):

================  =================  ==========================================================
key               shape              meaning
================  =================  ==========================================================
images            [NV, 3, H, W]      target views, float32 in [-1, 1]
ref_image         [1, 3, H, W]       reference view, float32 in [-1, 1]
cam_pose          [NV, 16]           camera MLP input (see ``geometry.camera_pose_vector``)
ref_cam_pose      [1, 16]            same for the reference
plucker           [NV, 6, H, W]      Plücker rays (d, o x d) at the output resolution
ref_plucker       [1, 6, H, W]
anchor            [NV, 3, H, W]      spatial-anchor images in [-1, 1]
ref_anchor        [1, 3, H, W]
intrinsics        [NV, 3, 3]         pixels of the output H x W image
extrinsics        [NV, 4, 4]         world->camera (OpenCV)
ref_intrinsics    [1, 3, 3]
ref_extrinsics    [1, 4, 4]
azimuth_deg       [NV]               camera azimuth around ``up`` relative to the reference
                                     camera, in [0, 360), counter-clockwise seen from above
index             int                position of the sample in the dataset
================  =================  ==========================================================

H = W = ``resolution``. The studio's up axis is +y (``geometry.cameras.WORLD_UP``); pass ``up``
for data captured with another convention.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from pippo_lightning.data.samplers import mix_seed
from pippo_lightning.data.schema import SampleError, canonical_sample, check_sample
from pippo_lightning.geometry.cameras import (
    WORLD_UP,
    relative_azimuth_deg,
    scale_intrinsics,
    to_homogeneous_extrinsics,
)
from pippo_lightning.geometry.plucker import plucker_rays

#: Keys of every item, in the order of the table above.
BATCH_KEYS: tuple[str, ...] = (
    "images",
    "ref_image",
    "cam_pose",
    "ref_cam_pose",
    "plucker",
    "ref_plucker",
    "anchor",
    "ref_anchor",
    "intrinsics",
    "extrinsics",
    "ref_intrinsics",
    "ref_extrinsics",
    "azimuth_deg",
    "index",
)

ViewSampling = Literal["random", "fixed"]
PluckerSource = Literal["recompute", "stored"]


def list_sample_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A directory (its ``*.npy``, sorted) or an explicit list of files."""
    if isinstance(source, str | Path):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"sample directory {root} does not exist")
        files = sorted(root.glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"no *.npy sample files in {root}")
        return files
    files = [Path(f) for f in source]
    if not files:
        raise ValueError("MultiViewDataset: empty list of sample files")
    return files


def load_sample(path: str | Path) -> dict[str, Any]:
    """Read one sample file (pickled dict of tensors or arrays), canonicalised and validated.

    The format is a pickle (as the original's): only read files from sources you trust.
    """
    try:
        raw = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise SampleError(f"{path}: cannot read the sample file: {error}") from error
    value = (
        raw.item()
        if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == ()
        else raw
    )
    if not isinstance(value, dict):
        found = (
            f"array {list(raw.shape)} {raw.dtype}"
            if isinstance(raw, np.ndarray)
            else type(value).__name__
        )
        raise SampleError(f"{path}: expected a pickled dict (np.save of a dict), found {found}")
    sample = canonical_sample(value)
    check_sample(sample, path)
    return sample


def evenly_spaced_views(azimuth_deg: Tensor, count: int) -> Tensor:
    """Indices [count] of views closest to azimuths 0, 360/count, 2*360/count, ... (no repeats).

    Deterministic, and starts at the reference direction, so validation sees a turnaround.
    """
    taken = torch.zeros_like(azimuth_deg, dtype=torch.bool)
    chosen = []
    for k in range(count):
        target = 360.0 * k / count
        gap = (azimuth_deg - target).remainder(360.0)
        gap = torch.minimum(gap, 360.0 - gap).masked_fill(taken, float("inf"))
        index = int(gap.argmin())
        taken[index] = True
        chosen.append(index)
    return torch.tensor(chosen, dtype=torch.long)


def resize_images(images: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of [N, C, h, w] (a no-op at the same size)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(
        images, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )


class MultiViewDataset(Dataset):
    """Samples of ``num_views`` target views plus the reference view (batch contract above).

    view_sampling "random" draws views from a generator seeded by (seed, epoch, index): pass
    (index, epoch) keys (see :class:`~pippo_lightning.data.samplers.EpochSampler`) or call
    :meth:`set_epoch`. "fixed" takes the views nearest to evenly spaced azimuths (validation).
    plucker_source "recompute" derives the rays exactly from the (resized) cameras; "stored"
    resizes the file's ``plucker`` maps instead (bilinear, approximate).
    cache_in_memory keeps loaded files (per process: every DataLoader worker has its own cache).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        num_views: int,
        resolution: int,
        view_sampling: ViewSampling = "random",
        seed: int = 0,
        cache_in_memory: bool = False,
        up: Sequence[float] = WORLD_UP,
        plucker_source: PluckerSource = "recompute",
    ) -> None:
        if view_sampling not in ("random", "fixed"):
            raise ValueError(f"view_sampling must be 'random' or 'fixed', got {view_sampling!r}")
        if plucker_source not in ("recompute", "stored"):
            raise ValueError(
                f"plucker_source must be 'recompute' or 'stored', got {plucker_source!r}"
            )
        if num_views < 1 or resolution < 1:
            raise ValueError(
                f"num_views and resolution must be >= 1, got {num_views}, {resolution}"
            )
        self.files = list_sample_files(source)
        self.num_views, self.resolution = num_views, resolution
        self.view_sampling, self.seed = view_sampling, seed
        self.cache_in_memory, self.up, self.plucker_source = (
            cache_in_memory,
            tuple(up),
            plucker_source,
        )
        self.epoch = 0
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer keys (keys of the form (index, epoch) override it)."""
        self.epoch = epoch

    def load(self, index: int) -> dict[str, Any]:
        """The validated raw sample at ``index`` (from the cache when enabled)."""
        if index in self._cache:
            return self._cache[index]
        sample = load_sample(self.files[index])
        if self.plucker_source == "stored":
            check_sample(sample, self.files[index], required=("plucker", "ref_plucker"))
        if self.cache_in_memory:
            self._cache[index] = sample
        return sample

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load(index)
        path = self.files[index]
        cams = _cameras(sample)
        azimuth = relative_azimuth_deg(cams["extrinsics"], cams["ref_extrinsics"], up=self.up)
        views = self._select_views(azimuth, path, epoch, index)
        parts = {**self._views(sample, cams, views), **self._reference(sample, cams)}
        parts.update(azimuth_deg=azimuth[views], index=index)
        return {key: parts[key] for key in BATCH_KEYS}

    def _select_views(self, azimuth: Tensor, path: Path, epoch: int, index: int) -> Tensor:
        available = azimuth.shape[0]
        if self.num_views > available:
            raise SampleError(
                f"{path}: asked for {self.num_views} views but the sample has {available}"
            )
        if self.view_sampling == "fixed":
            return evenly_spaced_views(azimuth, self.num_views)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        return torch.randperm(available, generator=generator)[: self.num_views]

    def _views(
        self, sample: dict[str, Any], cams: dict[str, Tensor], views: Tensor
    ) -> dict[str, Tensor]:
        """Target-view entries for the chosen ``views`` at the output resolution."""
        images = sample["image"][views, 0]  # [NV, 3, h, w]
        intrinsics, extrinsics = cams["intrinsics"][views], cams["extrinsics"][views]
        out = self._pixels(images, sample["kpts"][views, 0], intrinsics)
        stored = sample["plucker"][views, 0] if self.plucker_source == "stored" else None
        return {
            "images": out["images"],
            "cam_pose": _float(sample["cam_pose"][views, 0]),  # [NV, 16]
            "plucker": self._plucker(out["intrinsics"], extrinsics, stored),
            "anchor": out["anchor"],
            "intrinsics": out["intrinsics"],
            "extrinsics": extrinsics,
        }

    def _reference(self, sample: dict[str, Any], cams: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reference entries ([1, ...]) at the output resolution."""
        out = self._pixels(
            sample["ref_image"][:, 0], sample["ref_kpts"][:, 0], cams["ref_intrinsics"]
        )
        stored = sample["ref_plucker"][:, 0] if self.plucker_source == "stored" else None
        return {
            "ref_image": out["images"],
            "ref_cam_pose": _float(sample["ref_cam_pose"][:, 0]),  # [1, 16]
            "ref_plucker": self._plucker(out["intrinsics"], cams["ref_extrinsics"], stored),
            "ref_anchor": out["anchor"],
            "ref_intrinsics": out["intrinsics"],
            "ref_extrinsics": cams["ref_extrinsics"],
        }

    def _pixels(self, images: Tensor, anchors: Tensor, intrinsics: Tensor) -> dict[str, Tensor]:
        """Resize images/anchors [N, 3, h, w] to the output size, scale K to match, map to [-1, 1]."""
        size = self.resolution
        height, width = images.shape[-2:]
        return {
            "images": _to_unit_range(resize_images(_float(images), size, size)),
            "anchor": _to_unit_range(resize_images(_float(anchors), size, size)),
            "intrinsics": scale_intrinsics(intrinsics, size / width, size / height),
        }

    def _plucker(self, intrinsics: Tensor, extrinsics: Tensor, stored: Tensor | None) -> Tensor:
        size = self.resolution
        if stored is None:
            return plucker_rays(intrinsics, extrinsics, size, size)
        return F.interpolate(
            _float(stored), size=(size, size), mode="bilinear", align_corners=False
        )


def _float(x: Tensor) -> Tensor:
    return x.to(torch.float32)


def _to_unit_range(pixels: Tensor) -> Tensor:
    """0-255 values -> [-1, 1] (the range the compressors and the diffusion loss expect)."""
    return (pixels / 127.5 - 1.0).clamp(-1.0, 1.0)


def _cameras(sample: dict[str, Any]) -> dict[str, Tensor]:
    """All-view cameras as float32 K [N, 3, 3] / E [N, 4, 4] (3x4 forms accepted), ref [1, ...]."""
    return {
        "intrinsics": _float(sample["cam_intrin"][..., :3, :3]),
        "extrinsics": to_homogeneous_extrinsics(_float(sample["cam_extrin"])),
        "ref_intrinsics": _float(sample["ref_cam_intrin"][..., :3, :3]),
        "ref_extrinsics": to_homogeneous_extrinsics(_float(sample["ref_cam_extrin"])),
    }
