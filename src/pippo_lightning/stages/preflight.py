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
them (through the dry build and the settings dataclasses) rather than restating them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pippo_lightning.conditioning.dropout import ConditionDropout
from pippo_lightning.data.sources import has_samples, open_source, sample_view_count
from pippo_lightning.diffusion.ddim import leading_timesteps
from pippo_lightning.diffusion.schedules import ScheduleConfig
from pippo_lightning.stages.config import (
    ConfigError,
    EMAConfig,
    OptimizerConfig,
    SamplingConfig,
    ValidationConfig,
    coerce,
    plain,
)
from pippo_lightning.stages.dry_build import check_model
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
