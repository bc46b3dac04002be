"""Callbacks that make a run survive interruption: exact resume, non-finite guard (preemption:
`callbacks.preemption`).

`ExactResume` stores what Lightning's checkpoint leaves out so that a resumed run continues
bit-for-bit like an uninterrupted one: the random stream the training steps draw from, the
position of the train loader inside its epoch, and the W&B run id.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

# preemption lives in its own module; these names stay importable from here
from pippo_lightning.callbacks.preemption import (  # noqa: F401
    PREEMPTED_EXIT_CODE,
    Preemption,
    exit_if_preempted,
)
from pippo_lightning.errors import PippoError

log = logging.getLogger(__name__)

#: key of the W&B run id in ExactResume's checkpoint state (read by cli.train before fitting)
WANDB_RUN_ID_KEY = "wandb_run_id"

RngState = dict[str, Any]


# --------------------------------------------------------------------------- RNG states
def capture_rng_state() -> RngState:
    """torch (CPU and CUDA), numpy and python RNG states, as checkpoint-safe plain data."""
    # the legacy global generator is the state to save: it is what np.random.* calls draw from
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        # numpy's key array as a tensor, so the checkpoint holds no numpy objects
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng_state(state: RngState) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- data position
class _SkipBatches:
    """A batch sampler whose next epoch starts `skip` batches in (one-shot, for resume)."""

    def __init__(self, batch_sampler: Any, loader: ResumableDataLoader) -> None:
        self.batch_sampler, self.loader = batch_sampler, loader

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        skip = self.loader._take_skip()
        for i, batch in enumerate(self.batch_sampler):
            # the skipped batches' indices are drawn but their samples never loaded
            if i >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning sees as stateful: its state is (epoch, batches handed out).

    Lightning restores it before creating the epoch's iterator, and the iterator then skips the
    batches the interrupted run already trained on — the same batches follow as in an
    uninterrupted run. The skip sits on the (per-rank) batch sampler, so it also holds under
    DDP's sampler wrapping. No `__init__` of its own: Lightning re-creates loaders from
    DataLoader's arguments when it injects a distributed sampler.
    """

    def __iter__(self) -> Any:
        self._handed_out = 0
        iterator = super().__iter__()
        return _Counting(iterator, self)

    @property
    def _index_sampler(self) -> Any:
        base = super()._index_sampler
        return _SkipBatches(base, self) if self._auto_collation else base

    def _take_skip(self) -> int:
        epoch, batches = getattr(self, "_pending", (None, 0))
        self._pending = (None, 0)
        current = getattr(self.sampler, "epoch", epoch)
        # a checkpoint from an epoch's last batch resumes at the next epoch: nothing to skip
        skip = batches if epoch == current and batches < len(self.batch_sampler) else 0
        self._skipped = skip
        self._handed_out = skip
        return skip

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batches": int(getattr(self, "_handed_out", 0)),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = (state["epoch"], state["batches"])
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(state["epoch"])


class _Counting:
    """Wraps a DataLoader iterator and counts the batches it hands out."""

    def __init__(self, iterator: Any, loader: ResumableDataLoader) -> None:
        self.iterator, self.loader = iterator, loader

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader._handed_out = getattr(self.loader, "_handed_out", 0) + 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)


def make_resumable(loader: DataLoader) -> ResumableDataLoader:
    """The same loader (dataset, sampler, workers, collate...) as a ResumableDataLoader."""
    if isinstance(loader, ResumableDataLoader):
        return loader
    common = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )
    if loader.batch_size is None:  # a custom batch sampler
        return ResumableDataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)
    return ResumableDataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=loader.sampler,
        drop_last=loader.drop_last,
        **common,
    )


# --------------------------------------------------------------------------- exact resume
class ExactResume(L.Callback):
    """Checkpoint the training RNG stream, the train-loader position and the W&B run id.

    The training steps draw from their own RNG stream: it is swapped into the global generators
    at each train batch start and out again at its end. Validation, loader start-up (which draws
    a base seed) and the like use the outer stream, so they cannot shift the training noise —
    and a resumed run, which skips the validation that followed its checkpoint and builds its
    loader at another moment, still draws the same timesteps, noise and dropout masks.
    """

    def __init__(self) -> None:
        self._stream: RngState | None = None
        self._outer: RngState | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        datamodule = getattr(trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_dataloader"):
            # the datamodule builds plain DataLoaders; wrap its train loader (instance attribute,
            # so the datamodule class and other users of it are untouched)
            build = datamodule.train_dataloader
            if not getattr(build, "_pippo_resumable", False):

                def train_dataloader() -> Any:
                    loader = build()
                    return make_resumable(loader) if isinstance(loader, DataLoader) else loader

                train_dataloader._pippo_resumable = True  # type: ignore[attr-defined]
                datamodule.train_dataloader = train_dataloader

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._outer = capture_rng_state()
        if self._stream is not None:
            restore_rng_state(self._stream)
        # a fresh run's stream starts from the seeded global state

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._stream = capture_rng_state()
        if self._outer is not None:
            restore_rng_state(self._outer)
            self._outer = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # leave the process' generators as they were outside the training step
        if self._outer is not None:
            self._stream = capture_rng_state()
            restore_rng_state(self._outer)
            self._outer = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._stream, WANDB_RUN_ID_KEY: self._wandb_run_id()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stream = state_dict.get("rng")

    def _wandb_run_id(self) -> str | None:
        if self._trainer is None:
            return None
        for logger in self._trainer.loggers:
            if isinstance(logger, WandbLogger):
                return str(logger.version) if logger.version else None
        return None


# --------------------------------------------------------------------------- non-finite guard
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
