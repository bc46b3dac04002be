"""Callbacks that make a run survive interruption: exact resume, non-finite guard (preemption:
`callbacks.preemption`).

`ExactResume` keeps the W&B run id in checkpoints. A resumed run continues bit-for-bit like an
uninterrupted one because the random streams live with their owners and are checkpointed with
them: the stage's training stream (timesteps, noise, dropout masks) and the data module's
train-loader position; validation and loader start-up draw from the global generators and so
cannot shift the training noise."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from pippo_lightning.callbacks.preemption import (  # noqa: F401
    PREEMPTED_EXIT_CODE,
    Preemption,
    exit_if_preempted,
)
from pippo_lightning.errors import PippoError

log = logging.getLogger(__name__)


#: key of the W&B run id in ExactResume's checkpoint state (read by cli.train before fitting)
WANDB_RUN_ID_KEY = "wandb_run_id"


# --------------------------------------------------------------------------- exact resume
class ExactResume(L.Callback):
    """Keep the W&B run id in checkpoints, so a resumed run logs to the run it continues.

    The rest of an exact resume is state where it belongs, saved with the checkpoint by
    Lightning: the stage's training random stream (`PippoStage.training_rng`) and the data
    module's train-loader position (`data.resumable.ResumableDataLoader`).
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {WANDB_RUN_ID_KEY: self._wandb_run_id()}

    def _wandb_run_id(self) -> str | None:
        if self._trainer is None:
            return None
        for logger in self._trainer.loggers:
            if isinstance(logger, WandbLogger):
                return str(logger.version) if logger.version else None
        return None


class NonFiniteError(PippoError):
    """Too many consecutive training steps had a NaN/Inf loss or gradient."""


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no tensor holds a NaN/Inf: the per-tensor checks stay on the device and are
    combined there, so a step costs one host sync, not one per parameter."""
    if not tensors:
        return True
    flags = [torch.isfinite(t).all() for t in tensors]  # 0-dim bool tensors, on their device
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for flag in flags:
        by_device.setdefault(flag.device, []).append(flag)
    verdicts = [torch.stack(group).all() for group in by_device.values()]
    return bool(
        torch.stack([v.cpu() for v in verdicts]).all() if len(verdicts) > 1 else verdicts[0]
    )


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose gradients (hence loss) are not finite; abort after
    `max_consecutive` such steps in a row, writing the offending batches' indices to
    `dump_path`. Under DDP the ranks agree (any rank bad → every rank skips), so all of them
    take the same branch and none waits on a collective the others skip.
    """

    def __init__(self, max_consecutive: int = 5, dump_path: str | None = None) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.dump_path = dump_path
        self.skipped = 0
        self.consecutive = 0
        self._bad_batches: list[dict[str, Any]] = []
        self._indices: list[int] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        index = batch.get("index") if isinstance(batch, dict) else None
        self._indices = [] if index is None else [int(i) for i in torch.as_tensor(index).flatten()]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        # sharded (FSDP2) gradients are DTensors: each rank checks its own shard, the reduce
        # below combines the verdicts
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        finite = all_finite(local)
        # every rank must decide the same: a rank that skips while another steps would desync
        bad = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not bad:
            self.consecutive = 0
            self._bad_batches = []
            return
        # no gradient → AdamW leaves the parameter and its moments untouched
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        self.consecutive += 1
        self._bad_batches.append({"global_step": trainer.global_step, "index": self._indices})
        log.warning(
            "non-finite gradients at step %d (batch indices %s): step skipped",
            trainer.global_step,
            self._indices,
        )
        if self.consecutive >= self.max_consecutive:
            self._abort(trainer)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, batch_size=1)

    def _abort(self, trainer: L.Trainer) -> None:
        where = ""
        if self.dump_path and trainer.is_global_zero:
            path = Path(self.dump_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self._bad_batches, indent=2))
            where = f"; their batch indices are in {path}"
        steps = ", ".join(f"step {b['global_step']}: index {b['index']}" for b in self._bad_batches)
        raise NonFiniteError(
            f"{self.consecutive} consecutive training steps had NaN/Inf gradients ({steps}){where}"
        )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self.consecutive = state_dict.get("consecutive", 0)
