"""Shared fixtures: composed configs on tiny shapes, written under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from pippo_lightning.cli.common import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

#: Overrides that shrink the demo to seconds: 32 px, 8x8 latents, 2 views, 3 subjects.
TINY_RUN = [
    "image_size=32",
    "num_views=2",
    "compressor.space_to_depth=4",
    "data.synthetic.num_train_subjects=3",
    "data.synthetic.num_val_subjects=1",
    "data.batch_size=2",
    "data.val_batch_size=1",
    "data.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "stage.sampling.num_steps=2",
    "stage.validation.sample_batches=1",
    "stage.optimizer.warmup_steps=2",
    "callbacks.throughput.window_size=2",
]


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach the network or a user's W&B / Hugging Face settings."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # A W&B run started in this process leaves its service's address here; child processes
    # would inherit it and share that service, which then still holds the run of a child that
    # was killed, so the resumed child is refused ("run ID ... is in use"). Children start their
    # own service, as separate jobs on a cluster do.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a Hydra config as `pippo-train` would, with outputs and data under tmp_path."""

    def _compose(
        *overrides: str, config_name: str = "train", data_dir: Path | None = None
    ) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                config_name=config_name,
                overrides=[
                    f"paths.root_dir={tmp_path}",
                    f"paths.data_dir={data_dir or tmp_path / 'data'}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    *overrides,
                ],
                return_hydra_config=True,
            )
        # as in @hydra.main: the hydra node is set globally and not part of the job's config
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
