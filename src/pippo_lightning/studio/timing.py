"""How fast the synthetic studio renders: seconds per subject, views per second."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample, subject_seed


@dataclass(frozen=True)
class StudioRenderTiming:
    """Rendering cost of synthetic-studio subjects (every dome view plus the reference)."""

    resolution: int
    views_per_subject: int
    subjects: int
    median_subject_s: float
    views_per_s: float


def measure_studio_render(
    resolution: int = 64, subjects: int = 3, supersample: int = 1, warmup: int = 1
) -> StudioRenderTiming:
    """Time ``subjects`` studio subjects at ``resolution`` after ``warmup`` untimed ones."""
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    config = StudioConfig(resolution=resolution, supersample=supersample)
    seconds = []
    for index in range(warmup + subjects):
        params = SubjectParams.sample(subject_seed(config.seed, "train", index))
        start = time.perf_counter()
        render_subject_sample(params, config)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    views = config.num_views + 1  # the dome and the reference camera
    return StudioRenderTiming(resolution, views, subjects, median, views / median)
