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

With a latent cache (:mod:`.latent_cache`, built by ``pippo-data cache-latents``) three more keys
hold the compressor's encodings of exactly the tensors above, so a stage can skip encoding:

================  =================  ==========================================================
latents           [NV, C, h, w]      ``compressor.encode(images)``
ref_latent        [1, C, h, w]       ``compressor.encode(ref_image)``
anchor_latents    [NV + 1, C, h, w]  ``compressor.encode(cat([anchor, ref_anchor]))``: targets,
                                     then the reference (the order ``LatentBatch`` uses)
================  =================  ==========================================================

H = W = ``resolution``. The studio's up axis is +y (``geometry.cameras.WORLD_UP``); pass ``up``
for data captured with another convention.

View sampling (``view_sampling``): "random" draws ``num_views`` distinct views uniformly;
"spread" takes views nearest to evenly spaced azimuths starting at a random angle (a random
turnaround); "fixed" the same starting at the reference azimuth (deterministic: validation).
Random draws come from (seed, epoch, index), so they are reproducible in any worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from pippo_lightning.data.latent_cache import LatentCache
from pippo_lightning.data.preparation import (
    as_float,
    pixels_at,
    prepare_sample,
    sample_cameras,
)
from pippo_lightning.data.samplers import mix_seed
from pippo_lightning.data.schema import SampleError, check_sample
from pippo_lightning.data.sources import NpySource, SampleSource, SourceSpec, open_source
from pippo_lightning.geometry.cameras import (
    WORLD_UP,
    relative_azimuth_deg,
)
from pippo_lightning.geometry.plucker import plucker_rays

log = logging.getLogger(__name__)

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
#: Keys added after BATCH_KEYS when the dataset reads a latent cache.
LATENT_KEYS: tuple[str, ...] = ("latents", "ref_latent", "anchor_latents")

ViewSampling = Literal["random", "spread", "fixed"]
VIEW_SAMPLINGS: tuple[str, ...] = ("random", "spread", "fixed")
PluckerSource = Literal["recompute", "stored"]


def list_sample_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A directory (its ``*.npy``, sorted) or an explicit list of files."""
    opened = open_source(source)
    if not isinstance(opened, NpySource):
        raise ValueError(f"{source} is a shard directory, not a folder of .npy files")
    return opened.files


def evenly_spaced_views(
    azimuth_deg: Tensor, count: int, start_deg: float = 0.0, step_deg: float | None = None
) -> Tensor:
    """Indices [count] of views closest to azimuths start, start + step, ... (no repeats).

    ``step_deg`` None: 360 / count (a whole turnaround); a fixed step (e.g. 15) keeps neighbouring
    views close enough for the reprojection matcher at any count (an arc, not a circle).
    With start 0 it is deterministic and begins at the reference direction.
    """
    step = 360.0 / count if step_deg is None else float(step_deg)
    taken = torch.zeros_like(azimuth_deg, dtype=torch.bool)
    chosen = []
    for k in range(count):
        target = start_deg + step * k
        gap = (azimuth_deg - target).remainder(360.0)
        gap = torch.minimum(gap, 360.0 - gap).masked_fill(taken, float("inf"))
        index = int(gap.argmin())
        taken[index] = True
        chosen.append(index)
    return torch.tensor(chosen, dtype=torch.long)


def select_views(
    azimuth_deg: Tensor,
    count: int,
    sampling: ViewSampling,
    generator: torch.Generator,
    step_deg: float | None = None,
) -> Tensor:
    """Indices [count] of the views to use, by strategy (see the module docstring)."""
    if sampling == "fixed":
        return evenly_spaced_views(azimuth_deg, count, step_deg=step_deg)
    if sampling == "spread":
        start = float(torch.rand((), generator=generator)) * 360.0
        return evenly_spaced_views(azimuth_deg, count, start, step_deg)
    return torch.randperm(azimuth_deg.shape[0], generator=generator)[:count]


class MultiViewDataset(Dataset):
    """Samples of ``num_views`` target views plus the reference view (batch contract above).

    source: a folder of ``*.npy`` samples, a shard directory, a list of ``.npy`` files, or a
    :class:`~pippo_lightning.data.sources.SampleSource`.
    view_sampling: "random" | "spread" | "fixed" (module docstring); view_step_deg: the azimuth
    step between "fixed"/"spread" views (None: 360 / num_views). Random draws are seeded by
    (seed, epoch, index): pass (index, epoch) keys (see
    :class:`~pippo_lightning.data.samplers.EpochSampler`) or call :meth:`set_epoch`.
    plucker_source "recompute" derives the rays exactly from the (resized) cameras; "stored"
    resizes the file's ``plucker`` maps instead (bilinear, approximate).
    cache_in_memory keeps loaded samples (per process: every DataLoader worker has its own cache).
    latents: a :class:`~pippo_lightning.data.latent_cache.LatentCache` for these samples at this
    resolution; items then also carry :data:`LATENT_KEYS`.
    """

    def __init__(
        self,
        source: SourceSpec | SampleSource,
        num_views: int,
        resolution: int,
        view_sampling: ViewSampling = "random",
        seed: int = 0,
        cache_in_memory: bool = False,
        up: Sequence[float] = WORLD_UP,
        plucker_source: PluckerSource = "recompute",
        latents: LatentCache | None = None,
        view_step_deg: float | None = None,
    ) -> None:
        if view_sampling not in VIEW_SAMPLINGS:
            raise ValueError(
                f"view_sampling must be one of {VIEW_SAMPLINGS}, got {view_sampling!r}"
            )
        if plucker_source not in ("recompute", "stored"):
            raise ValueError(
                f"plucker_source must be 'recompute' or 'stored', got {plucker_source!r}"
            )
        if num_views < 1 or resolution < 1:
            raise ValueError(
                f"num_views and resolution must be >= 1, got {num_views}, {resolution}"
            )
        if view_step_deg is not None and not 0.0 < view_step_deg * num_views <= 360.0 + 1e-6:
            raise ValueError(
                f"view_step_deg={view_step_deg} x num_views={num_views} must span (0, 360] degrees"
            )
        self.source = open_source(source)
        self.num_views, self.resolution = num_views, resolution
        self.view_sampling, self.seed = view_sampling, seed
        self.view_step_deg = view_step_deg
        self.cache_in_memory, self.up, self.plucker_source = (
            cache_in_memory,
            tuple(up),
            plucker_source,
        )
        if latents is not None:
            latents.check_matches(self.source, resolution)
        self.latents = latents
        self.epoch = 0
        self._cache: dict[int, dict[str, Any]] = {}

    @property
    def files(self) -> list[Path]:
        """The sample files (``.npy`` sources only)."""
        if not isinstance(self.source, NpySource):
            raise AttributeError("a shard-directory dataset has no per-sample files")
        return self.source.files

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer keys (keys of the form (index, epoch) override it)."""
        self.epoch = epoch

    def load(self, index: int) -> dict[str, Any]:
        """The validated raw sample at ``index`` (from the cache when enabled)."""
        if index in self._cache:
            return self._cache[index]
        where = self.source.describe(index)
        sample = prepare_sample(self.source.read(index), where)
        if self.plucker_source == "stored":
            check_sample(sample, where, required=("plucker", "ref_plucker"))
        if self.cache_in_memory:
            self._cache[index] = sample
        return sample

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load(index)
        cams = sample_cameras(sample)
        azimuth = relative_azimuth_deg(cams["extrinsics"], cams["ref_extrinsics"], up=self.up)
        views = self._select_views(azimuth, self.source.describe(index), epoch, index)
        parts = {**self._views(sample, cams, views), **self._reference(sample, cams)}
        parts.update(azimuth_deg=azimuth[views], index=index)
        item = {key: parts[key] for key in BATCH_KEYS}
        if self.latents is not None:
            item.update(self.latents.item(index, views))
        return item

    def _select_views(self, azimuth: Tensor, where: str, epoch: int, index: int) -> Tensor:
        available = azimuth.shape[0]
        if self.num_views > available:
            raise SampleError(
                f"{where}: asked for {self.num_views} views but the sample has {available}"
            )
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        return select_views(
            azimuth, self.num_views, self.view_sampling, generator, self.view_step_deg
        )

    def _views(
        self, sample: dict[str, Any], cams: dict[str, Tensor], views: Tensor
    ) -> dict[str, Tensor]:
        """Target-view entries for the chosen ``views`` at the output resolution."""
        images = sample["image"][views, 0]  # [NV, 3, h, w]
        intrinsics, extrinsics = cams["intrinsics"][views], cams["extrinsics"][views]
        out = pixels_at(images, sample["kpts"][views, 0], intrinsics, self.resolution)
        stored = sample["plucker"][views, 0] if self.plucker_source == "stored" else None
        return {
            "images": out["images"],
            "cam_pose": as_float(sample["cam_pose"][views, 0]),  # [NV, 16]
            "plucker": self._plucker(out["intrinsics"], extrinsics, stored),
            "anchor": out["anchor"],
            "intrinsics": out["intrinsics"],
            "extrinsics": extrinsics,
        }

    def _reference(self, sample: dict[str, Any], cams: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reference entries ([1, ...]) at the output resolution."""
        out = pixels_at(
            sample["ref_image"][:, 0],
            sample["ref_kpts"][:, 0],
            cams["ref_intrinsics"],
            self.resolution,
        )
        stored = sample["ref_plucker"][:, 0] if self.plucker_source == "stored" else None
        return {
            "ref_image": out["images"],
            "ref_cam_pose": as_float(sample["ref_cam_pose"][:, 0]),  # [1, 16]
            "ref_plucker": self._plucker(out["intrinsics"], cams["ref_extrinsics"], stored),
            "ref_anchor": out["anchor"],
            "ref_intrinsics": out["intrinsics"],
            "ref_extrinsics": cams["ref_extrinsics"],
        }

    def _plucker(self, intrinsics: Tensor, extrinsics: Tensor, stored: Tensor | None) -> Tensor:
        size = self.resolution
        if stored is None:
            return plucker_rays(intrinsics, extrinsics, size, size)
        return F.interpolate(
            as_float(stored), size=(size, size), mode="bilinear", align_corners=False
        )
