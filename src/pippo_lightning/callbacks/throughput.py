"""Training throughput and MFU through Lightning's ThroughputMonitor.

Lightning logs `train/device/samples_per_sec` (subjects), `train/device/items_per_sec` (views),
`train/device/batches_per_sec`, and with more than one rank the same without `device/` for the
whole job. MFU needs the FLOPs of a step: they are counted once, by torch's FlopCounterMode
around the first training step (forward, backward and the compressor's encode, as they ran), and
`train/device/mfu` appears where Lightning knows the device's peak (CUDA GPUs; not CPUs).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def batch_samples(batch: dict[str, Any]) -> int:
    """Subjects in a batch (`images` [B, NV, 3, H, W], or cached `latents` [B, NV, C, h, w])."""
    return int(_views_tensor(batch).shape[0])


def batch_views(batch: dict[str, Any]) -> int:
    """Target views in a batch: ThroughputMonitor's "items"."""
    shape = _views_tensor(batch).shape
    return int(shape[0] * shape[1])


def _views_tensor(batch: dict[str, Any]) -> Any:
    return batch["images"] if "images" in batch else batch["latents"]


class StepThroughputMonitor(ThroughputMonitor):
    """ThroughputMonitor over subjects (samples) and views (items), with the FLOPs per batch
    measured on the first training step so that MFU can be logged.

    The measured step runs under FlopCounterMode (slower); its time is left out of the rates.
    The count is kept in checkpoints: a resumed run does not count again.
    ``measure_flops=false`` skips the count (no MFU).
    """

    def __init__(self, window_size: int = 10, measure_flops: bool = True) -> None:
        super().__init__(
            batch_size_fn=batch_samples, length_fn=batch_views, window_size=window_size
        )
        self.measure_flops = measure_flops
        self._counter: Any = None
        self.flops_per_batch: int | None = None

    @rank_zero_only
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.measure_flops or self.flops_per_batch is not None:
            return
        if hasattr(pl_module, "flops_per_batch"):  # the module states its own
            return
        if trainer.global_step > 0:
            # only a run's first step is counted: a resumed run takes the count from its
            # checkpoint, so a run stopped and resumed computes exactly what an uninterrupted
            # one does (the counted step dispatches through the counter's mode)
            return
        from torch.utils.flop_counter import FlopCounterMode

        self._counter = FlopCounterMode(display=False)
        self._counter.__enter__()

    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        measured = self._counter is not None
        if measured:
            counter, self._counter = self._counter, None
            counter.__exit__(None, None, None)
            self.flops_per_batch = int(counter.get_total_flops())
            # ThroughputMonitor reads the module's attribute (per rank and batch)
            pl_module.flops_per_batch = self.flops_per_batch
            log.info("training step: %.3g FLOPs per batch (per rank)", self.flops_per_batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        if measured:
            self._start(trainer)  # the counted step ran slower: measure from here on

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.flops_per_batch is not None:  # restored from the checkpoint
            pl_module.flops_per_batch = self.flops_per_batch

    def state_dict(self) -> dict[str, Any]:
        return {"flops_per_batch": self.flops_per_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flops_per_batch = state_dict.get("flops_per_batch")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # a step that failed while counted must not leave the counting mode on the stack
        if self._counter is not None:
            counter, self._counter = self._counter, None
            counter.__exit__(None, None, None)
