"""`pippo-train`: build data, compressor, stage, callbacks, loggers and trainer from the config; fit."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

from pippo_lightning.callbacks.preemption import exit_if_preempted
from pippo_lightning.callbacks.resume import prepare_resume, reliability_plugins
from pippo_lightning.callbacks.tracking import announce_runs
from pippo_lightning.checkpoints.loading import allowed_checkpoint_globals, refusal
from pippo_lightning.cli.common import (
    CONFIG_DIR,
    check_overrides,
    distributed_job_scope,
    guarded,
    install_ddp_child_command,
    instantiate_group,
    resolved_config,
)
from pippo_lightning.cli.run_setup import apply_extras, require_plugins
from pippo_lightning.sharing.artifacts import log_artifacts_if_enabled
from pippo_lightning.stages.config import ConfigError
from pippo_lightning.stages.precision import resolve_precision
from pippo_lightning.stages.preflight import validate_run_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished `train` leaves behind, for callers and tests."""

    metrics: dict[str, float]
    stage: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer


def train(cfg: DictConfig) -> TrainResult:
    """Fit the configured stage; returns the final metrics and the objects it built."""
    # issue #7: a malformed config fails here, with one message, before data, weights, model
    # or trainer exist
    validate_run_config(cfg)
    resolve_trainer_precision(cfg)
    output_dir = Path(cfg.paths.output_dir)
    # issue #17: the config tree, tags, known warnings silenced (cli/run_setup.py)
    apply_extras(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    compressor = hydra.utils.instantiate(cfg.compressor)
    stage: L.LightningModule = hydra.utils.instantiate(cfg.stage, compressor=compressor)
    # issue #7: pick the checkpoint (auto_resume) and continue its W&B run, before loggers exist
    ckpt_path = prepare_resume(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:
        # logger=none: Lightning's LearningRateMonitor refuses to run without a logger, and
        # there is nowhere for its values to go anyway
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, plugins=reliability_plugins(cfg)
    )

    counts = stage.parameter_counts()
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": resolved_config(cfg), "parameters": counts})
    if trainer.is_global_zero:
        announce_runs(trainer.loggers)  # the run's URL, or its offline dir + `wandb sync`
    log.info("parameters: %s", ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))

    try:
        # weights_only: resuming from a downloaded checkpoint must not run its code; this also
        # reaches Lightning's own loads (a sharded checkpoint's meta.pt, atomic_checkpoints=false)
        with allowed_checkpoint_globals():
            try:
                trainer.fit(stage, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            except pickle.UnpicklingError as err:  # Lightning's own loader refused the file
                if ckpt_path is None:
                    raise
                raise refusal(ckpt_path, err) from err
        if trainer.is_global_zero:
            log_artifacts_if_enabled(
                bool(cfg.get("wandb_artifacts")),
                trainer.loggers,
                checkpoint=getattr(trainer.checkpoint_callback, "last_model_path", None) or None,
                config=resolved_config(cfg),
            )
    finally:
        # Each run (and each job of a multirun in one process) gets its own W&B run.
        finish_wandb_runs(trainer)
    exit_if_preempted(trainer)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        summary = write_summary(output_dir, trainer, metrics)
        print_summary(summary)
    return TrainResult(metrics=metrics, stage=stage, datamodule=datamodule, trainer=trainer)


def resolve_trainer_precision(cfg: DictConfig) -> str:
    """`trainer.precision: auto` -> bf16-mixed where the accelerator multiplies bf16 natively,
    else 32-true (pippo_lightning.stages.precision); explicit values are kept. Written back into the
    config before the Trainer is built, so the logged config says what ran."""
    trainer = cfg.trainer
    resolved = resolve_precision(
        trainer.get("precision", "32-true"), trainer.get("accelerator", "auto")
    )
    if str(trainer.get("precision")) == "auto":
        log.info("precision auto -> %s", resolved)
    with open_dict(trainer):
        trainer.precision = resolved
    return resolved


def finish_wandb_runs(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def write_summary(
    output_dir: Path, trainer: L.Trainer, metrics: dict[str, float]
) -> dict[str, Any]:
    """Record where the run's outputs are and its final metrics in `<run>/summary.json`."""
    checkpoint = trainer.checkpoint_callback
    samples = next((cb.last_path for cb in trainer.callbacks if hasattr(cb, "last_path")), None)
    wandb_dirs = sorted(str(p) for p in output_dir.glob("wandb/*run-*"))
    summary = {
        "output_dir": str(output_dir),
        "global_step": trainer.global_step,
        "checkpoint": getattr(checkpoint, "last_model_path", None) or None,
        "sample_grid": str(samples) if samples else None,
        "wandb_runs": wandb_dirs,
        "metrics": metrics,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    metrics = summary["metrics"]
    lines = [
        "",
        f"run directory : {summary['output_dir']}",
        f"checkpoint    : {summary['checkpoint']}",
        f"sample grid   : {summary['sample_grid']}",
        f"W&B runs      : {', '.join(summary['wandb_runs']) or '-'}",
    ]
    if "val/psnr" in metrics and "val/psnr_copy_reference" in metrics:
        lines.append(
            f"val PSNR      : generated {metrics['val/psnr']:.2f} dB vs copy-the-reference "
            f"baseline {metrics['val/psnr_copy_reference']:.2f} dB"
        )
    print("\n".join(lines))


#: What `pippo-train` returns to a sweeper when neither ``optimized_metric`` nor the checkpoint
#: callback's ``monitor`` names a metric.
DEFAULT_OPTIMIZED_METRIC = "val/loss"


def optimized_metric(cfg: DictConfig, result: TrainResult) -> float | None:
    """The value a sweeper (e.g. Hydra's Optuna sweeper) optimises: ``cfg.optimized_metric``,
    else the checkpoint callback's ``monitor``, else val/loss; None when the run never logged it
    (no validation ran). A name that is set but unknown to the run is an error, not a silent None.
    """
    callbacks = cfg.get("callbacks") or {}
    monitor = (callbacks.get("model_checkpoint") or {}).get("monitor")
    explicit = cfg.get("optimized_metric") or monitor
    name = explicit or DEFAULT_OPTIMIZED_METRIC
    if name in result.metrics:
        return result.metrics[name]
    if explicit and result.metrics:
        raise ConfigError(
            f"optimized_metric / model_checkpoint.monitor is {name!r}, which the run did not "
            f"log; logged: {sorted(result.metrics)}"
        )
    return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@guarded
def _main(cfg: DictConfig) -> float | None:
    """Train; return the optimised metric so that sweepers (Optuna) can use the run."""
    with distributed_job_scope():
        return optimized_metric(cfg, train(cfg))


def main() -> None:
    require_plugins(sys.argv[1:])
    check_overrides("train")
    install_ddp_child_command()
    _main()


if __name__ == "__main__":
    main()
