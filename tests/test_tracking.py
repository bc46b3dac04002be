"""W&B the way its users use it (issue #17.2): checkpoints as artifacts when online, tags /
group / job type from the config, the run's address printed, hierarchical metric names."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import hydra

from pippo_lightning.callbacks.loggers import wandb_logger
from pippo_lightning.callbacks.tracking import hydra_choice, resolve_log_model, run_address
from pippo_lightning.cli.train import train
from tests.conftest import TINY_RUN
from tests.wandb_offline import OfflineRun, read_offline_run

#: keys W&B and Lightning add to every row by themselves
BOOKKEEPING = {"epoch", "trainer/global_step", "_step", "_runtime", "_timestamp"}


def offline_run_with_rows(path: Path, key: str, timeout_s: float = 20.0) -> OfflineRun:
    """The offline run under ``path`` once a row holds ``key``: the W&B service writes the run
    file in its own process and may still be flushing it when ``finish()`` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_offline_run(path)
        if any(key in row for row in run.rows) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_checkpoints_are_logged_as_artifacts_only_online(tmp_path: Path):
    assert resolve_log_model("auto", "online") is True
    assert resolve_log_model("all", "online") == "all"
    assert resolve_log_model("auto", "offline") is False
    assert resolve_log_model(True, "offline") is False  # W&B cannot log models offline
    # Lightning's WandbLogger logs each checkpoint as `model-<id>` with aliases latest / best
    assert wandb_logger(tmp_path, mode="online")._log_model is True
    assert wandb_logger(tmp_path, mode="offline")._log_model is False


def test_wandb_group_job_type_and_tags_come_from_the_config(compose_config):
    cfg = compose_config(*TINY_RUN, "tags=[lr_scan,v2]")
    logger = hydra.utils.instantiate(cfg.logger.wandb)
    init = logger._wandb_init
    assert init["group"] == "demo_cpu" == hydra_choice("experiment")
    assert init["job_type"] == "train_p3"
    assert init["tags"] == ["lr_scan", "v2"]


def test_offline_address_names_the_directory_and_the_sync_command(tmp_path: Path):
    run_dir = tmp_path / "wandb" / "offline-run-20260101_000000-abc123"
    offline = SimpleNamespace(offline=True, id="abc123", dir=str(run_dir / "files"), url=None)
    assert run_address(offline) == (
        f"W&B offline run abc123: {run_dir}  (upload: wandb sync {run_dir})"
    )
    online = SimpleNamespace(offline=False, id="abc123", url="https://wandb.ai/me/p/runs/abc123")
    assert run_address(online) == "W&B run abc123: https://wandb.ai/me/p/runs/abc123"


def test_training_run_is_tagged_grouped_announced_and_names_metrics_hierarchically(
    compose_config, tmp_path: Path, capsys
):
    cfg = compose_config(*TINY_RUN, "tags=[habits]", "trainer.max_steps=2")
    train(cfg)
    out = capsys.readouterr().out
    run = offline_run_with_rows(tmp_path / "run", "train/loss")
    (line,) = [ln for ln in out.splitlines() if ln.startswith("W&B offline run")]
    assert run.run_id in line and "wandb sync" in line  # printed although WANDB_SILENT is set
    assert Path(line.rsplit("wandb sync ", 1)[1].rstrip(")")).is_dir()
    assert (run.group, run.job_type, run.tags) == ("demo_cpu", "train_p3", ["habits"])
    logged = set().union(*(row.keys() for row in run.rows)) - BOOKKEEPING
    assert "train/lr" in logged and "lr" not in logged
    flat = sorted(k for k in logged if "/" not in k)
    assert not flat, f"metric names without a section (train/, val/): {flat}"
