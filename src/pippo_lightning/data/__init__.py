"""Sample schema, multi-view datasets, the synthetic studio and the LightningDataModule.

Only :mod:`.datamodule` imports Lightning; it is loaded lazily so the rest stays Lightning-free.
"""

from typing import Any

from pippo_lightning.data.dataset import MultiViewDataset, evenly_spaced_views, load_sample
from pippo_lightning.data.samplers import EpochSampler
from pippo_lightning.data.schema import SAMPLE_KEYS, SampleError, check_sample
from pippo_lightning.data.synthetic_studio import (
    StudioConfig,
    StudioMismatchError,
    SubjectParams,
    generate_studio,
)

__all__ = [
    "SAMPLE_KEYS",
    "EpochSampler",
    "MultiViewDataModule",
    "MultiViewDataset",
    "SampleError",
    "StudioConfig",
    "StudioMismatchError",
    "SubjectParams",
    "check_sample",
    "evenly_spaced_views",
    "generate_studio",
    "load_sample",
]


def __getattr__(name: str) -> Any:
    if name == "MultiViewDataModule":
        from pippo_lightning.data.datamodule import MultiViewDataModule

        return MultiViewDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
