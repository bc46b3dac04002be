"""Training throughput: samples/s and views/s measured around each optimizer step."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class ThroughputLogger(L.Callback):
    """Logs `train/samples_per_sec` and `train/views_per_sec` from wall time per batch."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._start: float | None = None
        self._times: list[float] = []
        self._samples: list[int] = []
        self._views: list[int] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._start is None:
            return
        images = batch["images"]  # [B, NV, 3, H, W]
        self._times.append(time.perf_counter() - self._start)
        self._samples.append(images.shape[0] * trainer.world_size)
        self._views.append(images.shape[0] * images.shape[1] * trainer.world_size)
        self._times, self._samples, self._views = (
            self._times[-self.window :],
            self._samples[-self.window :],
            self._views[-self.window :],
        )
        elapsed = sum(self._times)
        pl_module.log("train/samples_per_sec", sum(self._samples) / elapsed, prog_bar=True)
        pl_module.log("train/views_per_sec", sum(self._views) / elapsed)
