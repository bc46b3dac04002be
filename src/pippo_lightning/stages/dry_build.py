"""The checks only a dry build can do: the stage built on the meta device (no memory, no weights)
from the config, its parameter count, the latent geometry the compressor gives, the image
encoder's width, and whether an init checkpoint's tensors fit it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from pippo_lightning.checkpoints.files import checkpoint_problem
from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.compressors.base import Compressor
from pippo_lightning.errors import PippoError
from pippo_lightning.models.image_encoders import ImageEncoder
from pippo_lightning.stages.config import ConfigError, plain
from pippo_lightning.stages.init_from import fit_problems, misfit_message, model_weights

log = logging.getLogger(__name__)


Shapes = dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------- model
class _GeometryOnly(Compressor):
    """Stands in for the configured compressor in the dry build: its latent shape, no weights."""

    def __init__(self, downsample_factor: int, latent_channels: int) -> None:
        super().__init__()
        self.downsample_factor, self.latent_channels = downsample_factor, latent_channels

    def _encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError("a dry-build stand-in does not encode")

    def _decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError("a dry-build stand-in does not decode")

    def identity_key(self) -> str:
        return f"geometry-f{self.downsample_factor}-c{self.latent_channels}"


class _EmbeddingOnly(ImageEncoder):
    """Stands in for the configured image encoder in the dry build: its width, no weights."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError("a dry-build stand-in does not embed")


def check_model(cfg: DictConfig) -> None:
    """Dry-build the stage (patch grid, stage rules) and check the init checkpoint against it."""
    init_from = cfg.stage.get("init_from")
    geometry = latent_geometry(cfg.compressor)
    if geometry is None:
        # e.g. a VAE named by hub id: its latent shape is known once it loads, and the stage's
        # own checks run then (still before any data are touched)
        log.info("compressor geometry unknown before loading: model checks run at stage build")
        if init_from:
            checkpoint_shapes(str(init_from))  # at least: the file is there and whole
        return
    encoder_dim, encoder_known = image_encoder_dim(cfg.stage.get("image_encoder"))
    stage = dry_build_stage(cfg, _GeometryOnly(*geometry), encoder_dim)
    if init_from:
        own = {k: tuple(v.shape) for k, v in stage.model.state_dict().items()}
        if not encoder_known:  # its width is a guess: do not judge the layers it sizes
            own = {k: v for k, v in own.items() if not k.startswith("global_embedding.")}
        check_init_checkpoint(str(init_from), own, describe_model(cfg, stage))


def latent_geometry(compressor: DictConfig) -> tuple[int, int] | None:
    """(downsample factor, latent channels) of the configured compressor, without loading it."""
    cls = hydra.utils.get_class(compressor._target_)
    settings = {k: v for k, v in plain(compressor).items() if not k.startswith("_")}
    return cls.latent_geometry(**settings) if issubclass(cls, Compressor) else None


def image_encoder_dim(encoder: DictConfig | None) -> tuple[int | None, bool]:
    """(embedding width or None without an encoder, whether the width is known unloaded)."""
    if encoder is None:
        return None, True
    cls = hydra.utils.get_class(encoder._target_)
    settings = {k: v for k, v in plain(encoder).items() if not k.startswith("_")}
    dim = cls.embedding_dim_of(**settings) if issubclass(cls, ImageEncoder) else None
    return (dim, True) if dim is not None else (1, False)


def dry_build_stage(
    cfg: DictConfig, compressor: Compressor, encoder_dim: int | None
) -> torch.nn.Module:
    """The configured stage built on the meta device (no memory, no init checkpoint)."""
    node = OmegaConf.to_container(cfg.stage, resolve=True)
    assert isinstance(node, dict)
    node.pop("image_encoder", None)
    node["init_from"] = None  # checked against this build's shapes instead (check_init_checkpoint)
    encoder = None if encoder_dim is None else _EmbeddingOnly(encoder_dim)
    try:
        with torch.device("meta"):
            return hydra.utils.instantiate(node, compressor=compressor, image_encoder=encoder)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, PippoError | ConfigError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError):
            raise ConfigError(f"stage ({node.get('_target_')}): {cause}") from cause
        raise


def describe_model(cfg: DictConfig, stage: Any) -> str:
    model = stage.model_config
    return (
        f"stage {cfg.get('stage_name', '?')} with model.size={cfg.stage.get('model_size')} "
        f"(dim {model.dim}, depth {model.depth}), image_size={stage.image_size}, latents "
        f"{model.latent_channels}x{model.latent_size}x{model.latent_size}"
    )


def checkpoint_shapes(path: str) -> Shapes:
    """Weight shapes of a stage checkpoint (init_from.model_weights), its tensors memory-mapped."""
    if not Path(path).is_file():
        raise ConfigError(f"stage.init_from={path}: no such checkpoint file")
    problem = checkpoint_problem(path)
    if problem:
        raise ConfigError(f"stage.init_from={path}: not a loadable checkpoint: {problem}")
    try:
        checkpoint = load_torch_file(path, mmap=True)
    except Exception as err:  # unpickling errors come in many types
        raise ConfigError(f"stage.init_from={path}: cannot be read: {err}") from err
    return {k: tuple(v.shape) for k, v in model_weights(checkpoint, path).items()}


def check_init_checkpoint(path: str, own: Shapes, model: str) -> None:
    """The init checkpoint must fit the stage's weights `own` (stages.init_from.fit_problems)."""
    problems = fit_problems(checkpoint_shapes(path), own)
    if problems:
        raise ConfigError(misfit_message(path, problems, model))
