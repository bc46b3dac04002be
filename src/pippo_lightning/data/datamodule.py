"""LightningDataModule over per-sample files, optionally generating the synthetic studio first.

The only Lightning-aware module of :mod:`pippo_lightning.data`. A dataset root holds
``train/*.npy`` and ``val/*.npy`` (the studio's layout, also fine for converted real captures).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from pippo_lightning.data.dataset import MultiViewDataset, PluckerSource, ViewSampling
from pippo_lightning.data.samplers import EpochSampler
from pippo_lightning.data.synthetic_studio import MANIFEST, StudioConfig, generate_studio


def default_studio_root(config: StudioConfig, cache_dir: str | Path | None = None) -> Path:
    """Where a studio goes when no root is given: a per-config folder under `cache_dir`
    (default: the user cache), so changing the studio config never clashes with an old one."""
    if cache_dir is None:
        cache_dir = (
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pippo_lightning"
        )
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"studio-{digest}"


class MultiViewDataModule(LightningDataModule):
    """Train (random views, shuffled per epoch from ``seed``) and val (fixed views) loaders.

    synthetic: a :class:`StudioConfig` (or a mapping of its fields, e.g. from Hydra); then
    :meth:`prepare_data` generates the studio under ``root`` unless a matching one is there.
    val_num_views / val_batch_size default to num_views / batch_size. Without a root, the studio
    goes to a per-config folder under ``studio_cache_dir`` (default: the user cache).
    """

    def __init__(
        self,
        root: str | None = None,
        synthetic: StudioConfig | Mapping[str, Any] | None = None,
        num_views: int = 4,
        val_num_views: int | None = None,
        resolution: int = 64,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        cache_in_memory: bool = True,
        plucker_source: PluckerSource = "recompute",
        studio_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if synthetic is not None and not isinstance(synthetic, StudioConfig):
            synthetic = StudioConfig.from_dict(synthetic)
        if root is None and synthetic is None:
            raise ValueError(
                "MultiViewDataModule needs a data root, a synthetic studio config, or both"
            )
        self.synthetic = synthetic
        self.root = (
            Path(root) if root is not None else default_studio_root(synthetic, studio_cache_dir)
        )
        self.num_views, self.val_num_views = num_views, val_num_views or num_views
        self.resolution, self.seed = resolution, seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # torch refuses persistent workers without workers.
        self.persistent_workers = persistent_workers and num_workers > 0
        self.cache_in_memory, self.plucker_source = cache_in_memory, plucker_source
        self.train_dataset: MultiViewDataset | None = None
        self.val_dataset: MultiViewDataset | None = None

    def prepare_data(self) -> None:
        """Generate the synthetic studio (once; reused when its manifest matches the config)."""
        if self.synthetic is not None:
            generate_studio(self.synthetic, self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.synthetic is not None and not (self.root / MANIFEST).is_file():
            # setup() without prepare_data() (scripts, notebooks): generate in this process.
            self.prepare_data()
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = self._dataset("train", self.num_views, "random")
        if (
            self.val_dataset is None
            and stage in (None, "fit", "validate")
            and self._has_split("val")
        ):
            self.val_dataset = self._dataset("val", self.val_num_views, "fixed")

    def _has_split(self, split: str) -> bool:
        return any((self.root / split).glob("*.npy"))

    def _dataset(self, split: str, num_views: int, sampling: ViewSampling) -> MultiViewDataset:
        return MultiViewDataset(
            self.root / split,
            num_views=num_views,
            resolution=self.resolution,
            view_sampling=sampling,
            seed=self.seed,
            cache_in_memory=self.cache_in_memory,
            plucker_source=self.plucker_source,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        sampler = EpochSampler(len(self.train_dataset), seed=self.seed, shuffle=True)
        return self._loader(self.train_dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []  # no validation split: Lightning skips validation
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)

    def _loader(self, dataset: MultiViewDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )
