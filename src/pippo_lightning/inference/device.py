"""The device a sampling command runs on, its autocast, and how its time and memory are measured.

Shared by pippo-bench, pippo-generate, pippo-eval and the sampler table.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pippo_lightning.stages.precision import autocast_for


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench.device=cuda but no CUDA device is available")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """`precision`: auto | fp32 | bf16 (or a Lightning string); see pippo_lightning.stages.precision."""
    with autocast_for(device, precision):
        yield
