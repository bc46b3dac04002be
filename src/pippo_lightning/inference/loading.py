"""A checkpoint and a sampling command's config → the stage, its compressor and the held-out views.

Shared by pippo-eval, the sampler table and the ablation report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from pippo_lightning.data.dataset import MultiViewDataset
from pippo_lightning.inference.pipeline import (
    CheckpointError,
    load_stage,
    require_posed_views,
)
from pippo_lightning.sharing.transfer import resolve_checkpoint
from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.config import ConfigError

log = logging.getLogger(__name__)


def training_run_config(ckpt: str | Path) -> Path | None:
    """``<run>/.hydra/config.yaml`` of a checkpoint saved under ``<run>/checkpoints/``."""
    candidate = Path(ckpt).resolve().parent.parent / ".hydra" / "config.yaml"
    return candidate if candidate.is_file() else None


def compressor_config(cfg: DictConfig, ckpt: str | Path) -> tuple[DictConfig, str]:
    """The compressor to rebuild the checkpoint's stage with, and where it came from.

    Compressor weights are not in checkpoints, and the compressor must be the one the run
    trained with; with ``compressor_from=run`` it is read from the run's saved config (so a
    changed default never breaks an old checkpoint), else — or without a saved config — it is
    the ``compressor`` group of this config.
    """
    if cfg.compressor_from not in ("run", "config"):
        raise ConfigError(f"compressor_from must be 'run' or 'config', got {cfg.compressor_from!r}")
    saved = training_run_config(ckpt) if cfg.compressor_from == "run" else None
    if saved is not None:
        node = OmegaConf.load(saved).get("compressor")
        try:
            if node is not None:
                return OmegaConf.create(OmegaConf.to_container(node, resolve=True)), str(saved)
        except Exception as err:  # e.g. an interpolation only the training run could resolve
            log.warning("compressor of %s unusable (%s); using this config's", saved, err)
    return cfg.compressor, "config"


def load_model(
    cfg: DictConfig, device: torch.device
) -> tuple[PippoStage | None, dict[str, Any] | None]:
    """The stage of ``cfg.ckpt`` on ``device`` and the compressor it was rebuilt with (source
    and settings); (None, None) with ``gt_only``."""
    if cfg.gt_only:
        return None, None
    ckpt = None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt
    if not ckpt:
        raise CheckpointError(
            "no checkpoint given: pass ckpt=/path/to/checkpoints/last.ckpt "
            "(or gt_only=true image_size=... num_views=... to score the ground truth alone)"
        )
    # hf://owner/name: pull first, so the run's compressor config next to it is found
    ckpt = str(resolve_checkpoint(ckpt))
    node, source = compressor_config(cfg, ckpt)
    stage = load_stage(
        ckpt, hydra.utils.instantiate(node), hydra.utils.get_class(cfg.stage_class)
    ).to(device)
    require_posed_views(stage, ckpt)
    return stage, {"source": source, "config": OmegaConf.to_container(node, resolve=True)}


def pin_sizes(cfg: DictConfig, stage: PippoStage | None) -> tuple[int, int]:
    """Image size and views per subject (default: the checkpoint's), written back into ``cfg``
    so the data config's ``${image_size}`` / ``${num_views}`` resolve to them."""
    image_size = cfg.image_size or (stage.image_size if stage else None)
    num_views = cfg.num_views or (stage.num_views if stage else None)
    if image_size is None or num_views is None:
        raise ConfigError("gt_only=true needs image_size=... and num_views=...")
    if stage is not None and image_size != stage.image_size:
        raise ConfigError(
            f"image_size={image_size} but the checkpoint was trained at {stage.image_size} px"
        )
    with open_dict(cfg):
        cfg.image_size, cfg.num_views = int(image_size), int(num_views)
    return int(image_size), int(num_views)


def eval_loader(cfg: DictConfig, image_size: int, num_views: int) -> DataLoader:
    """Fixed views of the split's subjects from the reference azimuth, ``view_step_deg`` apart
    (null: evenly around the circle); the studio is generated if needed."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    dataset = MultiViewDataset(
        Path(datamodule.root) / cfg.split,
        num_views=num_views,
        resolution=image_size,
        view_sampling="fixed",
        seed=cfg.seed,
        view_step_deg=cfg.get("view_step_deg"),
    )
    subjects = range(
        len(dataset) if cfg.max_subjects is None else min(cfg.max_subjects, len(dataset))
    )
    return DataLoader(Subset(dataset, list(subjects)), batch_size=cfg.batch_size, shuffle=False)
