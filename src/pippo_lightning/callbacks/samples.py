"""Validation sample grids: reference | generated views | ground truth, to disk and W&B."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from pippo_lightning.callbacks.images import generated_outputs, view_grid, write_image_atomic

log = logging.getLogger(__name__)


class SampleGridLogger(L.Callback):
    """Collects the views a stage generates during validation and writes one grid per epoch.

    Only rank 0 writes; a failing W&B upload is reported and never stops training.
    """

    def __init__(self, output_dir: str | Path, max_rows: int = 4) -> None:
        self.output_dir = Path(output_dir)
        self.max_rows = max_rows
        self._rows: list[list[Tensor]] = []
        self.last_path: Path | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        outputs = generated_outputs(trainer.is_global_zero, outputs)
        if outputs is None:
            return
        for i in range(outputs["generated"].shape[0]):
            if len(self._rows) >= self.max_rows:
                return
            self._rows.append(
                [outputs["reference"][i], outputs["generated"][i], outputs["target"][i]]
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self._rows or trainer.sanity_checking:
            return
        grid = view_grid(self._rows)
        step = trainer.global_step
        self.last_path = write_image_atomic(self.output_dir / f"val_step{step:07d}.png", grid)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                try:
                    logger.log_image(
                        key="val/samples",
                        images=[grid],
                        caption=["reference | generated | ground truth"],
                        step=step,
                    )
                except Exception as err:  # media upload must never stall training
                    log.warning("could not log the sample grid to W&B: %s", err)
