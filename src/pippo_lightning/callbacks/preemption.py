"""Preemption: on SIGTERM/SIGUSR1 finish the step, checkpoint once, stop — and under SLURM requeue.

One handler path. Lightning's signal connector would, under SLURM with
`SLURMEnvironment(auto_requeue=True)` (its default there), save `hpc_ckpt_N.ckpt` from inside
the SIGUSR1 handler — mid-step, possibly mid-optimizer-step, with collectives issued from a signal
handler — and then `scontrol requeue` the job. Here the handler only sets a flag; at the end of
the step in flight every rank agrees to stop, `<dirpath>/last.ckpt` is written once, and then, if
the signal is the requeue signal of the trainer's `SLURMEnvironment` and its `auto_requeue` is on,
rank 0 requeues the job with the same `scontrol requeue <job id>` call Lightning makes. The
requeued job starts in the same run directory (named after the SLURM job id, see
`cli.common.run_stamp`) and `auto_resume` continues from that `last.ckpt`.

Our SIGUSR1 handler is installed at `on_fit_start`, before Lightning registers its own: Lightning
does not register its SLURM handler on a signal that already has one, so its save-and-requeue
path never runs. Its SIGTERM handler (which raises at the next loop boundary, possibly before
the checkpoint) is replaced at `on_train_start`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

#: exit status of a run stopped by SIGTERM/SIGUSR1 after writing its checkpoint (128 + SIGTERM)
PREEMPTED_EXIT_CODE = 143


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes, as Lightning forms it: `<array job>_<task>` for an array
    task, else `SLURM_JOB_ID` (None outside SLURM). Stable across requeues."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """`scontrol requeue <job id>` (Lightning's `_SignalConnector._slurm_sigusr_handler_fn` call,
    without its checkpoint); True when scontrol accepted it."""
    job_id = slurm_job_id()
    if job_id is None or not re.fullmatch(r"[0-9_-]+", job_id):
        log.error("cannot requeue: no valid SLURM job id (SLURM_JOB_ID=%r)", job_id)
        return False
    try:
        result = subprocess.call(["scontrol", "requeue", job_id])
    except FileNotFoundError:
        log.error("cannot requeue SLURM job %s: no `scontrol` on PATH", job_id)
        return False
    if result != 0:
        log.error("`scontrol requeue %s` failed with exit code %d", job_id, result)
        return False
    log.warning("requeued SLURM job %s", job_id)
    return True


def slurm_requeue_signal(trainer: L.Trainer) -> int | None:
    """The signal that asks for a requeue when the trainer runs under Lightning's SLURMEnvironment
    with `auto_requeue` on (its default under SLURM), else None."""
    # the same object Lightning's signal connector reads its SLURM settings from
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


class Preemption(L.Callback):
    """On SIGTERM or SIGUSR1: finish the current step, write `<dirpath>/last.ckpt`, stop; under
    SLURM's requeue signal (SIGUSR1) also requeue the job (see the module docstring).

    `cli.train` then exits with PREEMPTED_EXIT_CODE so a scheduler can tell "preempted, resume
    me" from success and from failure. The previous handlers are put back when the fit ends.
    """

    def __init__(
        self,
        dirpath: str,
        filename: str = "last.ckpt",
        signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        slurm_requeue: bool = True,
    ) -> None:
        self.path = Path(dirpath) / filename
        self.signals = tuple(getattr(signal, name) for name in signals)
        self.slurm_requeue = slurm_requeue
        self.received: int | None = None
        self.saved_path: Path | None = None
        self.requeued = False
        self._requeue_signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._armed = False

    # ------------------------------------------------------------------ handlers
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_signal = slurm_requeue_signal(trainer) if self.slurm_requeue else None
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # again: Lightning's SIGTERM handler was registered in between

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signums = set(self.signals) | ({self._requeue_signal} - {None})
        for signum in signums:
            # the handlers from before the fit, not Lightning's in-fit ones
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)
        self._armed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            # only a flag: the step in flight finishes, on_train_batch_end checkpoints and stops
            self.received = signum
            return
        # Lightning's teardown after a failed fit re-installs the handlers it found (ours):
        # outside a fit, behave as the handler from before it
        _forward(self._previous.get(signum, signal.SIG_DFL), signum, frame)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()  # after Lightning's own teardown put back what it found

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        self._armed = False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)

    # ------------------------------------------------------------------ the stop
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        requeue = self.received is not None and self.received == self._requeue_signal
        flags = torch.tensor([self.received is not None, requeue], device=pl_module.device)
        # all ranks stop at the same step (and agree on requeueing), even when the signal
        # reached only some of them
        flags = trainer.strategy.reduce(flags.int(), reduce_op="max")
        if int(flags[0]) == 0:
            return
        self.received = self.received or (self._requeue_signal if flags[1] else signal.SIGTERM)
        trainer.save_checkpoint(self.path)
        self.saved_path = self.path
        trainer.should_stop = True
        log.warning("preempted by signal %d: checkpoint written to %s", self.received, self.path)
        # after the checkpoint: the requeue ends this job, and the next one must find it
        if int(flags[1]) and trainer.is_global_zero:
            self.requeued = requeue_slurm_job()


def _forward(handler: Any, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def exit_if_preempted(trainer: L.Trainer) -> None:
    """Exit with PREEMPTED_EXIT_CODE when a Preemption callback stopped the run (its checkpoint
    is written); a no-op otherwise."""
    for callback in trainer.callbacks:
        if isinstance(callback, Preemption) and callback.saved_path is not None:
            then = "the requeued job resumes" if callback.requeued else "resume"
            log.warning("exiting after preemption; %s from %s", then, callback.saved_path)
            raise SystemExit(PREEMPTED_EXIT_CODE)
