"""W&B the way its users use it: runs grouped by experiment, evaluations written into the run
they evaluate, and the run's address printed even though W&B itself is kept silent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

#: `pippo-eval`'s `wandb_link` values
WANDB_LINKS = ("resume", "lineage", "none")


def hydra_choice(group: str, default: str = "default") -> str:
    """`${hydra_choice:experiment}`: the option chosen for a config group in this Hydra run
    (e.g. `demo_cpu`), or ``default`` outside a Hydra run or where the group is not chosen."""
    from hydra.core.hydra_config import HydraConfig

    try:
        choice = HydraConfig.get().runtime.choices.get(group)
    except (ValueError, AttributeError):  # HydraConfig not set (no Hydra run)
        choice = None
    return str(choice) if choice else default


def resolve_log_model(log_model: bool | str, mode: str) -> bool | str:
    """`log_model: auto` -> True online (checkpoints become `model-<run id>` artifacts with the
    aliases `latest` and `best`), False offline, where W&B cannot log model artifacts."""
    if mode != "online":
        if log_model not in ("auto", False):
            log.info("logger.wandb.log_model=%s ignored: W&B is %s", log_model, mode)
        return False
    return True if log_model == "auto" else log_model


def wandb_runs(loggers: Any) -> list[Any]:
    """The W&B runs behind a trainer's (or a plain list of) loggers, started ones only."""
    from lightning.pytorch.loggers import WandbLogger

    return [
        lg.experiment
        for lg in loggers
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None
    ]


def run_address(run: Any) -> str:
    """Where a W&B run can be seen: its URL online; offline, its directory and the command that
    uploads it."""
    if getattr(run, "offline", False):
        directory = Path(run.dir).parent  # <save_dir>/wandb/offline-run-<stamp>-<id>
        return f"W&B offline run {run.id}: {directory}  (upload: wandb sync {directory})"
    return f"W&B run {run.id}: {run.url}"


def announce_runs(loggers: Any) -> list[str]:
    """Print each W&B run's address (`WANDB_SILENT` hides W&B's own lines, not these)."""
    lines = [run_address(run) for run in wandb_runs(loggers)]
    for line in lines:
        print(line, flush=True)
    return lines


def link_eval_to_training_run(cfg: DictConfig, checkpoint: str | Path | None) -> str | None:
    """Point `pippo-eval`'s W&B logger at the training run of ``checkpoint``.

    ``wandb_link: resume`` writes into that run (the id its checkpoint recorded), keeping its
    name, group, tags and job type; ``lineage`` keeps a run of its own, grouped with the
    training run, that uses the training run's model artifact (online only); ``none`` leaves
    the logger as configured. Returns the training run's id (None: not known).
    """
    link = str(cfg.get("wandb_link", "resume"))
    if link not in WANDB_LINKS:
        from pippo_lightning.stages.config import ConfigError

        raise ConfigError(f"wandb_link must be one of {list(WANDB_LINKS)}, got {link!r}")
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or link == "none" or not checkpoint:
        return None
    run_id = training_run_id(checkpoint)
    if run_id is None:
        log.info("the checkpoint records no W&B run: pippo-eval logs to a run of its own")
        return None
    with open_dict(wandb_cfg):
        if link == "resume":
            wandb_cfg.run_id = run_id
            wandb_cfg.resume = "allow"
            # passed on resume these would rename / regroup / retag the training run
            for key in ("name", "group", "job_type", "tags"):
                wandb_cfg[key] = None
        wandb_cfg.log_model = False
    return run_id


def training_run_id(checkpoint: str | Path) -> str | None:
    """The W&B run id a training checkpoint recorded (ExactResume's state), or None."""
    from pippo_lightning.callbacks.reliability import WANDB_RUN_ID_KEY
    from pippo_lightning.checkpoints.files import read_callback_state

    try:
        run_id = read_callback_state(checkpoint, WANDB_RUN_ID_KEY)
    except (OSError, RuntimeError, ValueError) as err:  # e.g. a hub bundle without the state
        log.info("no W&B run id in %s: %s", checkpoint, err)
        return None
    return str(run_id) if run_id else None


def use_training_model_artifact(loggers: Any, training_run: str) -> bool:
    """Artifact lineage: the eval run uses the training run's `model-<id>:latest` (online)."""
    for run in wandb_runs(loggers):
        if getattr(run, "offline", False):
            log.info("W&B lineage needs an online run; the eval run is offline")
            continue
        try:
            run.use_artifact(f"model-{training_run}:latest")
            return True
        except Exception as err:  # the training run logged no model artifact
            log.warning("could not link the training run's model artifact: %s", err)
    return False
