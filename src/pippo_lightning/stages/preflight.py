"""Check a training run's config before any work starts (issue #7).

`pippo-train` calls :func:`validate_run_config` first: a malformed config fails with one
:class:`ConfigError` naming the key, its value and what was expected — before data are generated
or read, weights are loaded, a model is built or a trainer exists, so nothing is written beyond
Hydra's own ``.hydra/`` and log file. The checks, cheapest first:

- settings: the stage's typed settings (types and ranges), the run's sizes and counts, and the
  settings that constrain each other (sampling steps and validation timesteps against the noise
  schedule);
- views: the target views asked for against the views one sample has (the synthetic studio's
  cameras, or the first sample of a dataset on disk — a shard is not even read, only its
  tensor header);
- hardware: the accelerator and device count the trainer asks for (a GPU preset on a machine
  without a GPU, 8 GPUs on a 1-GPU machine) against what this machine has;
- model: a dry build of the stage on the meta device (no memory, no weights) runs every check
  the stage makes when it is built for real — the patch grid among them — and gives the weight
  shapes an init checkpoint (``stage.init_from``) must match; the checkpoint is memory-mapped,
  so only its key table is read.

The stage and data modules keep their own checks for programmatic use; this module reuses
them (through the dry build and the settings dataclasses) rather than restating them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from pippo_lightning.data.sources import has_samples, open_source, sample_view_count
from pippo_lightning.diffusion.ddim import leading_timesteps
from pippo_lightning.diffusion.schedules import ScheduleConfig
from pippo_lightning.errors import PippoError
from pippo_lightning.models.image_encoders import ImageEncoder
from pippo_lightning.stages.config import (
    ConditionDropout,
    ConfigError,
    EMAConfig,
    OptimizerConfig,
    SamplingConfig,
    ValidationConfig,
    coerce,
    plain,
)
from pippo_lightning.stages.init_from import fit_problems, misfit_message, model_weights
from pippo_lightning.studio.synthetic import StudioConfig

log = logging.getLogger(__name__)

#: the stage's typed settings, by key under `stage`
STAGE_SETTINGS: dict[str, type] = {
    "optimizer": OptimizerConfig,
    "condition_dropout": ConditionDropout,
    "sampling": SamplingConfig,
    "ema": EMAConfig,
    "validation": ValidationConfig,
    "schedule": ScheduleConfig,
}
Shapes = dict[str, tuple[int, ...]]


def validate_run_config(cfg: DictConfig, gpus_available: int | None = None) -> None:
    """Raise ConfigError for the first thing wrong with `cfg` (see the module docstring).

    `gpus_available`: the GPUs this machine has (default: counted with torch.cuda).
    """
    check_settings(cfg)
    check_hardware(cfg, gpus_available)
    check_views(cfg)
    check_model(cfg)


# --------------------------------------------------------------------------- settings
def check_settings(cfg: DictConfig) -> None:
    """Types and ranges of the stage settings and the run's sizes, and their cross-checks."""
    stage = cfg.stage
    settings = {
        key: build_settings(cls, stage.get(key), f"stage.{key}")
        for key, cls in STAGE_SETTINGS.items()
    }
    for key in ("image_size", "num_views"):
        if key in cfg:
            require_int(cfg[key], key, minimum=1)
    require_number(stage.get("noise_offset", 0.0), "stage.noise_offset", minimum=0.0)
    check_data_sizes(cfg.data)
    check_against_schedule(settings["schedule"], settings["sampling"], settings["validation"])
    check_warmup(settings["optimizer"], cfg.trainer)


def build_settings(cls: type, value: Any, where: str) -> Any:
    """The settings dataclass `cls` from the config node; every failure a ConfigError."""
    try:
        return coerce(cls, None if value is None else plain(value), where)
    except (ValueError, TypeError) as err:  # ConfigError, and e.g. ScheduleConfig's own checks
        message = str(err)
        if message.startswith(where):
            raise
        # the dataclasses name keys relative to the stage ("optimizer.lr must be > 0")
        relative = where.split(".", 1)[-1]
        full = f"stage.{message}" if message.startswith(relative) else f"{where}: {message}"
        raise ConfigError(full) from err


def require_int(value: Any, key: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {minimum}")


def require_number(value: Any, key: str, minimum: float) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # `not value >= minimum` also refuses NaN
    if not number or not value >= minimum:
        raise ConfigError(f"{key}={value!r}: expected a number >= {minimum}")


def check_data_sizes(data: DictConfig) -> None:
    require_int(data.get("batch_size", 1), "data.batch_size", minimum=1)
    if data.get("val_batch_size") is not None:
        require_int(data.val_batch_size, "data.val_batch_size", minimum=1)
    require_int(data.get("num_workers", 0), "data.num_workers", minimum=0)


def check_against_schedule(
    schedule: ScheduleConfig, sampling: SamplingConfig, validation: ValidationConfig
) -> None:
    """Settings only the first validation would otherwise trip over, after training steps."""
    steps = schedule.num_timesteps
    try:
        leading_timesteps(steps, sampling.num_steps)
    except ValueError as err:
        raise ConfigError(
            f"stage.sampling.num_steps={sampling.num_steps}: expected 1 .. {steps - 1} for "
            f"stage.schedule.num_timesteps={steps} ({err})"
        ) from err
    outside = [t for t in validation.loss_timesteps if not 0 <= t < steps]
    if outside:
        raise ConfigError(
            f"stage.validation.loss_timesteps={list(validation.loss_timesteps)}: {outside} "
            f"outside [0, {steps - 1}] (stage.schedule.num_timesteps={steps})"
        )


def check_warmup(optimizer: OptimizerConfig, trainer: DictConfig) -> None:
    max_steps = trainer.get("max_steps", -1)
    require_int(max_steps, "trainer.max_steps", minimum=-1)
    if max_steps == 0:
        raise ConfigError("trainer.max_steps=0: expected -1 (no step limit) or >= 1")
    # Not an error: a short smoke run (`make train trainer.max_steps=100`) keeps the recipe's
    # warm-up and simply never reaches the full rate.
    if max_steps > 0 and optimizer.warmup_steps > max_steps:
        log.warning(
            "stage.optimizer.warmup_steps=%d > trainer.max_steps=%d: the learning rate never "
            "reaches stage.optimizer.lr=%g in this run",
            optimizer.warmup_steps,
            max_steps,
            optimizer.lr,
        )


# --------------------------------------------------------------------------- hardware
#: accelerators that ask for a GPU
GPU_ACCELERATORS = ("gpu", "cuda")


def check_hardware(cfg: DictConfig, gpus_available: int | None = None) -> None:
    """A GPU trainer on a machine without (enough) GPUs fails here with the preset named,
    instead of as Lightning's "No supported gpu backend found!" inside an instantiate error."""
    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in GPU_ACCELERATORS:
        return  # cpu, or auto: Lightning takes what there is
    available = count_gpus(accelerator) if gpus_available is None else gpus_available
    devices = trainer.get("devices", "auto")
    needed = gpus_needed(devices)
    if available >= needed:
        return
    if available:
        has = f"{available} GPU{'s' if available > 1 else ''}"
        way_out = f"trainer.devices={available} (or fewer), or hardware=cpu"
    else:
        has, way_out = no_gpu_reason(), "hardware=cpu (or trainer.accelerator=cpu)"
    raise ConfigError(
        f"{hardware_choice()} needs {needed} CUDA GPU{'s' if needed > 1 else ''} per node "
        f"(trainer.accelerator={accelerator}, trainer.devices={devices}); this machine has "
        f"{has}: use {way_out}"
    )


def gpus_needed(devices: Any) -> int:
    """GPUs per node `trainer.devices` asks for: a count, a list of indices, -1 / auto (>= 1)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return 1
        if "," in text:  # Lightning reads "0,1" as device indices
            devices = [int(part) for part in text.split(",") if part.strip()]
        elif text.isdigit():
            devices = int(text)
        else:
            raise ConfigError(f"trainer.devices={devices!r}: expected a count, indices or auto")
    if isinstance(devices, int) and not isinstance(devices, bool):
        return 1 if devices == -1 else devices
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        indices = [int(i) for i in devices]
        return max(indices) + 1 if indices else 1  # index i needs i + 1 visible GPUs
    raise ConfigError(f"trainer.devices={devices!r}: expected a count, indices or auto")


def count_gpus(accelerator: str = "cuda") -> int:
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    # Lightning runs accelerator=gpu on Apple's MPS (one device) where there is no CUDA
    return int(accelerator == "gpu" and torch.backends.mps.is_available())


def no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"no CUDA GPU (torch {torch.__version__} is built without CUDA)"
    return "no CUDA GPU visible (torch.cuda.device_count() == 0; check CUDA_VISIBLE_DEVICES)"


def hardware_choice() -> str:
    """`hardware=<preset>` as chosen for this run, else the trainer key that asks for a GPU."""
    from hydra.core.hydra_config import HydraConfig

    try:
        preset = HydraConfig.get().runtime.choices.get("hardware")
    except ValueError:  # no Hydra run (a config built in Python)
        preset = None
    return f"hardware={preset}" if preset else "the trainer config"


# --------------------------------------------------------------------------- views
def check_views(cfg: DictConfig) -> None:
    """The views asked for per sample must exist in every sample (checked on the first)."""
    data = cfg.data
    if "num_views" not in data:
        return  # single-view photo folders (P1): one view per photo by construction
    wanted = {
        "train": ("data.num_views", data.num_views),
        "val": ("data.val_num_views", data.get("val_num_views") or data.num_views),
    }
    for key, count in wanted.values():
        require_int(count, key, minimum=1)
    if data.get("synthetic") is not None:
        check_studio_views(data.synthetic, wanted)
        return
    root = data_root(data)
    for split, (key, count) in wanted.items():
        directory = root / split
        if split == "val" and not (directory.is_dir() and has_samples(directory)):
            continue  # no validation split: the run trains without validating
        # open_source names a missing directory (FileNotFoundError: one `error:` line)
        source = open_source(directory)
        available = sample_view_count(source, 0)
        if available is not None and count > available:
            raise ConfigError(
                f"{key}={count}: the samples of {directory} have {available} views (first "
                f"sample: {source.describe(0)}); expected {key} <= {available}"
            )


def check_studio_views(synthetic: DictConfig, wanted: Mapping[str, tuple[str, int]]) -> None:
    try:
        studio = StudioConfig.from_dict(
            {k: v for k, v in plain(synthetic).items() if k != "_target_"}
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.synthetic: {err}") from err
    rings = [list(ring) for ring in studio.rings]
    for key, count in wanted.values():
        if count > studio.num_views:
            raise ConfigError(
                f"{key}={count}: the synthetic studio films each subject with "
                f"{studio.num_views} cameras (data.synthetic.rings={rings}: [elevation, cameras] "
                f"per ring); expected {key} <= {studio.num_views}, or more cameras in the rings"
            )


def data_root(data: DictConfig) -> Path:
    if OmegaConf.is_missing(data, "root") or data.get("root") is None:
        raise ConfigError(
            "data.root is not set: expected the directory of a prepared dataset "
            "(<root>/train and <root>/val), e.g. data.root=data/mine"
        )
    return Path(data.root)


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
