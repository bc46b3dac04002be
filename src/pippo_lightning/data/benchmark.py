"""How fast a data module feeds the model: samples per second out of its train loader.

Call it from ``make bench`` (or a notebook) with the data module the config builds; tune
``num_workers`` / ``pin_memory`` / ``persistent_workers`` / ``prefetch_factor`` against it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LoaderThroughput:
    """One measurement: timed batches after warm-up, and the cost of the first batch."""

    samples_per_s: float
    batches_per_s: float
    samples: int
    batches: int
    seconds: float
    first_batch_s: float  # worker start-up + first batch: what every epoch pays without
    # persistent workers


def _batch_size(batch: Any) -> int:
    """Samples in a collated batch (the leading size of its first tensor)."""
    if isinstance(batch, dict):
        batch = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    elif isinstance(batch, list | tuple):
        batch = batch[0]
    return int(batch.shape[0])


def measure_dataloader(datamodule: Any, num_batches: int = 50, warmup: int = 2) -> LoaderThroughput:
    """Time ``num_batches`` train batches after ``warmup`` untimed ones (restarting epochs)."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    epoch = 0

    def batches() -> Iterator[Any]:
        nonlocal epoch
        while True:
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    start = time.perf_counter()
    next(stream)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(stream)
    samples = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        samples += _batch_size(next(stream))
    seconds = time.perf_counter() - start
    return LoaderThroughput(
        samples_per_s=samples / seconds,
        batches_per_s=num_batches / seconds,
        samples=samples,
        batches=num_batches,
        seconds=seconds,
        first_batch_s=first,
    )


def benchmark_dataloader(datamodule: Any, num_batches: int = 50) -> float:
    """Samples per second from ``datamodule``'s train loader (after two warm-up batches)."""
    return measure_dataloader(datamodule, num_batches).samples_per_s
