"""Sample schema and formats, datasets, the multi-view LightningDataModule, shards, latent caches.

Knows no studio and no capture format (see :mod:`pippo_lightning.studio`, :mod:`pippo_lightning.captures`).

Only :mod:`.datamodule` imports Lightning; its classes are loaded lazily so the rest stays
Lightning-free. See ``docs/data.md`` for the schema, the formats and the ``pippo-data`` CLI.
"""

from typing import Any

from pippo_lightning.data.benchmark import benchmark_dataloader, measure_dataloader
from pippo_lightning.data.convert import npy_to_shards, shards_to_npy
from pippo_lightning.data.dataset import (
    BATCH_KEYS,
    LATENT_KEYS,
    MultiViewDataset,
    evenly_spaced_views,
)
from pippo_lightning.data.latent_cache import (
    LatentCache,
    StaleCacheError,
    cache_latents,
    check_latent_identity,
)
from pippo_lightning.data.npy_io import read_npy_sample, write_npy_sample
from pippo_lightning.data.preparation import load_sample
from pippo_lightning.data.samplers import EpochSampler
from pippo_lightning.data.schema import (
    SAMPLE_KEYS,
    Problem,
    SampleError,
    check_sample,
    validate_sample,
)
from pippo_lightning.data.shards import ShardReader, ShardWriter
from pippo_lightning.data.sources import open_source

__all__ = [
    "BATCH_KEYS",
    "LATENT_KEYS",
    "SAMPLE_KEYS",
    "EpochSampler",
    "LatentCache",
    "MultiViewDataModule",
    "MultiViewDataset",
    "Problem",
    "SampleError",
    "ShardReader",
    "ShardWriter",
    "StaleCacheError",
    "benchmark_dataloader",
    "cache_latents",
    "check_latent_identity",
    "check_sample",
    "evenly_spaced_views",
    "load_sample",
    "measure_dataloader",
    "npy_to_shards",
    "open_source",
    "read_npy_sample",
    "shards_to_npy",
    "validate_sample",
    "write_npy_sample",
]

#: Lightning-aware classes, imported on first use.
_LAZY = {"MultiViewDataModule"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pippo_lightning.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
