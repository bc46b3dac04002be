"""Where a training run resumes from, and the checkpoint plugins it trains with.

Read from the composed config before the trainer exists: the checkpoint directory of the run,
the newest valid checkpoint in it (`auto_resume`), and the W&B run that checkpoint was logging to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from pippo_lightning.callbacks.reliability import WANDB_RUN_ID_KEY
from pippo_lightning.checkpoints.files import (
    AtomicCheckpointIO,
    read_callback_state,
    resolve_ckpt_path,
)

log = logging.getLogger(__name__)


def reliability_plugins(cfg: Any) -> list[Any]:
    """Trainer plugins from the config: atomic checkpoint files unless `atomic_checkpoints=false`
    (e.g. for a strategy with its own distributed checkpoint writer)."""
    return [AtomicCheckpointIO()] if cfg.get("atomic_checkpoints", True) else []


def run_checkpoint_dir(cfg: Any) -> Path:
    """Where the run's checkpoints go: the checkpoint callback's `dirpath` (which may point at
    another disk), else `<output_dir>/checkpoints`."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    dirpath = callback.get("dirpath")
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def prepare_resume(cfg: Any) -> str | None:
    """The checkpoint to fit from (see `resolve_ckpt_path`); when there is one, point the W&B
    logger config at the run the checkpoint was logging to, so the resumed run continues it."""

    ckpt_path = resolve_ckpt_path(
        cfg.get("ckpt_path"), bool(cfg.get("auto_resume", True)), run_checkpoint_dir(cfg)
    )
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if ckpt_path is None or wandb_cfg is None:
        return ckpt_path
    run_id = read_callback_state(ckpt_path, WANDB_RUN_ID_KEY)
    if run_id:
        with open_dict(wandb_cfg):
            wandb_cfg.run_id = run_id
            wandb_cfg.resume = "allow"
        log.info("resuming W&B run %s", run_id)
    return ckpt_path
