"""The multi-view LightningDataModule: samples from a folder, shards, or a generator.

The only Lightning-aware module of :mod:`pippo_lightning.data`. It knows no studio and no capture
format: a generated dataset (the synthetic studio) is handed in by Hydra as a
:class:`~pippo_lightning.data.sources.SampleGenerator`; photo folders have their own data module in
:mod:`pippo_lightning.captures.photo_folder`. A multi-view dataset root holds
``train/`` and ``val/``, each a folder of ``*.npy`` samples or a shard directory (the studio's
layout, ``pippo-data prepare``'s output, or ``pippo-data convert``'s).

Loader settings (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``) are
plain arguments, so Hydra configs set them per machine; measure them with
:func:`pippo_lightning.data.benchmark.benchmark_dataloader`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from pippo_lightning.data.dataset import (
    VIEW_SAMPLINGS,
    MultiViewDataset,
    PluckerSource,
    ViewSampling,
)
from pippo_lightning.data.latent_cache import DEFAULT_CACHE_DIR, LatentCache, find_latent_cache
from pippo_lightning.data.resumable import ResumableDataLoader
from pippo_lightning.data.samplers import EpochSampler
from pippo_lightning.data.sources import SampleGenerator, has_samples, open_source
from pippo_lightning.errors import PippoError

log = logging.getLogger(__name__)


def default_studio_root(config: SampleGenerator, cache_dir: str | Path | None = None) -> Path:
    """Where a studio goes when no root is given: a per-config folder under `cache_dir`
    (default: the user cache), so changing the studio config never clashes with an old one."""
    if cache_dir is None:
        cache_dir = (
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pippo_lightning"
        )
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"studio-{digest}"


class LoaderSettings:
    """DataLoader options shared by the data modules (set per machine in the Hydra config)."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None

    def _set_loader(
        self,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        prefetch_factor: int | None,
    ) -> None:
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # torch refuses persistent workers and prefetching without workers.
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None

    def _loader(
        self, dataset: Dataset, batch_size: int, resumable: bool = False, **kwargs: Any
    ) -> DataLoader:
        """A loader with these settings; `resumable` for train loaders: it checkpoints its
        position in the epoch (Lightning saves it), so a resumed run skips what was trained on."""
        loader_class = ResumableDataLoader if resumable else DataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            prefetch_factor=self.prefetch_factor,
            **kwargs,
        )


class MultiViewDataModule(LoaderSettings, LightningDataModule):
    """Train (views drawn per epoch from ``seed``) and val (fixed views) loaders.

    synthetic: a :class:`~pippo_lightning.data.sources.SampleGenerator` (the synthetic studio's
    ``StudioConfig``, built by Hydra from ``_target_``); then :meth:`prepare_data` generates its
    samples under ``root`` unless matching ones are there.
    val_num_views / val_batch_size default to num_views / batch_size. Without a root, the studio
    goes to a per-config folder under ``studio_cache_dir`` (default: the user cache).

    View sampling per split: ``view_sampling`` (train; "random", "spread" or "fixed") and
    ``val_view_sampling`` (default "fixed": the same views every validation).

    latent_cache: a directory of latent caches (``pippo-data cache-latents``), or "auto" for
    ``<root>/latents``. A cache matching this data and ``resolution`` is used (batches then
    carry ``latents``, ``ref_latent``, ``anchor_latents``); stale ones are reported and skipped.
    latent_cache_key picks one compressor's cache when several exist. After :meth:`setup`,
    :attr:`latent_identity` names the compressor the cached latents came from (None: no cache),
    for the stage to compare with its own (``latent_cache.check_latent_identity``).
    """

    def __init__(
        self,
        root: str | None = None,
        synthetic: SampleGenerator | None = None,
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
        view_sampling: ViewSampling = "random",
        val_view_sampling: ViewSampling = "fixed",
        latent_cache: str | None = None,
        latent_cache_key: str | None = None,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        if root is None and synthetic is None:
            raise ValueError(
                "MultiViewDataModule needs a data root, a synthetic studio config, or both"
            )
        for name, value in (
            ("view_sampling", view_sampling),
            ("val_view_sampling", val_view_sampling),
        ):
            if value not in VIEW_SAMPLINGS:
                raise ValueError(f"{name} must be one of {VIEW_SAMPLINGS}, got {value!r}")
        self.synthetic = synthetic
        self.root = (
            Path(root) if root is not None else default_studio_root(synthetic, studio_cache_dir)
        )
        self.num_views, self.val_num_views = num_views, val_num_views or num_views
        self.resolution, self.seed = resolution, seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self._set_loader(num_workers, pin_memory, persistent_workers, prefetch_factor)
        self.cache_in_memory, self.plucker_source = cache_in_memory, plucker_source
        self.view_sampling, self.val_view_sampling = view_sampling, val_view_sampling
        self.latent_cache = (
            self.root / DEFAULT_CACHE_DIR if latent_cache == "auto" else latent_cache
        )
        self.latent_cache_key = latent_cache_key
        self.latent_identity: str | None = None
        self.train_dataset: MultiViewDataset | None = None
        self.val_dataset: MultiViewDataset | None = None

    def prepare_data(self) -> None:
        """Generate the synthetic studio (once; reused when its manifest matches the config)."""
        if self.synthetic is not None:
            self.synthetic.generate(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.synthetic is not None and not self.synthetic.is_generated(self.root):
            # setup() without prepare_data() (scripts, notebooks): generate in this process.
            self.prepare_data()
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = self._dataset("train", self.num_views, self.view_sampling)
        if (
            self.val_dataset is None
            and stage in (None, "fit", "validate")
            and self._has_split("val")
        ):
            self.val_dataset = self._dataset("val", self.val_num_views, self.val_view_sampling)

    def _has_split(self, split: str) -> bool:
        return (self.root / split).is_dir() and has_samples(self.root / split)

    def _dataset(self, split: str, num_views: int, sampling: ViewSampling) -> MultiViewDataset:
        source = open_source(self.root / split)
        return MultiViewDataset(
            source,
            num_views=num_views,
            resolution=self.resolution,
            view_sampling=sampling,
            seed=self.seed,
            cache_in_memory=self.cache_in_memory,
            plucker_source=self.plucker_source,
            latents=self._latents(split, source),
        )

    def _latents(self, split: str, source: Any) -> LatentCache | None:
        """The usable latent cache of ``split`` (None without one); one compressor for all."""
        if self.latent_cache is None:
            return None
        cache = find_latent_cache(
            self.latent_cache, split, source, self.resolution, self.latent_cache_key
        )
        if cache is None:
            log.warning(
                "no usable latent cache for %s/%s at %d px under %s: encoding on the fly",
                self.root,
                split,
                self.resolution,
                self.latent_cache,
            )
            return None
        if self.latent_identity not in (None, cache.identity):
            raise PippoError(
                f"latent caches of different compressors for train ({self.latent_identity}) and "
                f"{split} ({cache.identity}); set data.latent_cache_key"
            )
        self.latent_identity = cache.identity
        return cache

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        sampler = EpochSampler(len(self.train_dataset), seed=self.seed, shuffle=True)
        return self._loader(self.train_dataset, self.batch_size, resumable=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []  # no validation split: Lightning skips validation
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)
