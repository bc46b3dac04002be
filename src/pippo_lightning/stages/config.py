"""Typed settings shared by every training stage.

Hydra hands the stage modules plain mappings; turning them into these dataclasses at the door
means a misspelt key or an out-of-range value fails with one message before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pippo_lightning.checkpoints.loading import register_safe_globals
from pippo_lightning.conditioning.dropout import CONDITIONS, ConditionDropout
from pippo_lightning.diffusion.sampling import SamplerConfig
from pippo_lightning.errors import ConfigError

T = TypeVar("T")


def plain(value: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists, recursively,
    so hyperparameters pickle into checkpoints that load with `weights_only=True`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def coerce(cls: type[T], value: T | Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from a mapping, naming the bad key when one is unknown."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    kwargs = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in value.items()}
    check_field_types(cls, kwargs, where)
    return cls(**kwargs)


def check_field_types(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming `where.key` when a value does not have its field's type.

    Without this a string where a number belongs (YAML reads `1e-4` as a string) fails deep
    inside a comparison with a TypeError that names neither the key nor the value.
    """
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # an annotation only a type checker resolves: nothing to check against
        return
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not matches_type(value, hint):
            got = (
                f"a list of {len(value)}"
                if isinstance(value, Sequence) and not isinstance(value, str)
                else f"a {type(value).__name__}"
            )
            raise ConfigError(
                f"{where}.{name}={value!r}: expected {describe_type(hint)}, got {got}"
            )


def matches_type(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (the simple ones settings use: bool, int,
    float, str, unions / optionals and tuples); unknown annotations accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in args)
    if origin is tuple:
        # any sequence: Hydra hands over ListConfig, YAML lists, tuples
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(matches_type, value, args))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    # numbers.*: numpy scalars count too; an int is a fine float (`lr: 1`), a bool is neither
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def describe_type(hint: Any) -> str:
    """`float | None` -> "a number or null", for error messages in config terms."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return "null" if hint is type(None) else names.get(hint, getattr(hint, "__name__", str(hint)))


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a linear warm-up, as in the paper (lr 1e-4, betas (0.9, 0.98), eps 1e-6)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    warmup_start_lr: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        # `not x > 0` rather than `x <= 0`: NaN fails every comparison and must be refused too
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"optimizer.lr must be a finite number > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two values in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"optimizer.eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.warmup_start_lr <= self.lr:
            raise ConfigError(
                f"optimizer.warmup_start_lr must be in (0, lr={self.lr}], got {self.warmup_start_lr}"
            )

    def lr_factor(self, step: int) -> float:
        """Multiplier on `lr` at optimizer step `step`: linear from warmup_start_lr, then flat."""
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return 1.0
        start = self.warmup_start_lr / self.lr
        return start + (1.0 - start) * step / self.warmup_steps


@dataclass(frozen=True)
class SamplingConfig:
    """Validation / inference sampling: steps, guidance and which conditions guidance drops.

    Which sampler walks those steps (DDIM, DPM-Solver++ 2M, UniPC) is the stage's `sampler`
    part (the `sampler` config group), not a setting here: it changes no trained weight.
    """

    num_steps: int = 25
    eta: float = 0.0
    cfg_scale: float = 1.0
    #: "constant": cfg_scale for every view; "bump": per view, from cfg_floor at the reference's
    #: azimuth up to cfg_scale from 90° to 270° (see diffusion.guidance.bump_cfg_scale)
    cfg_schedule: str = "constant"
    cfg_floor: float = 1.0
    cfg_rescale: float = 0.0
    uncond_drops: tuple[str, ...] = ("ref",)
    #: attention biasing gamma for sampling more views than trained (paper: 1.4-1.6);
    #: None keeps the plain 1/sqrt(d) softmax scale
    attention_gamma: float | None = None
    #: clip predicted clean samples to [-x, x] at every step (pixel space: 1.0); None = off
    clip_x0: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "uncond_drops", tuple(self.uncond_drops))
        if self.num_steps < 1:
            raise ConfigError(f"sampling.num_steps must be >= 1, got {self.num_steps}")
        if self.cfg_schedule not in ("constant", "bump"):
            raise ConfigError(
                f"sampling.cfg_schedule must be 'constant' or 'bump', got {self.cfg_schedule!r}"
            )
        if self.attention_gamma is not None and self.attention_gamma <= 0:
            raise ConfigError(f"sampling.attention_gamma must be > 0, got {self.attention_gamma}")
        unknown = [c for c in self.uncond_drops if c not in CONDITIONS]
        if unknown:
            raise ConfigError(
                f"sampling.uncond_drops has unknown condition(s) {unknown}; expected some of {list(CONDITIONS)}"
            )
        # the sampler checks eta, cfg_rescale and clip_x0 itself, but only when it is built
        # at the first validation, after training steps: ask it now
        try:
            self.sampler_config()
        except ValueError as err:
            raise ConfigError(f"sampling: {err}") from err

    def sampler_config(self) -> SamplerConfig:
        """The sampler's settings for these sampling settings."""
        return SamplerConfig(
            num_steps=self.num_steps,
            eta=self.eta,
            cfg_scale=self.cfg_scale,
            cfg_rescale=self.cfg_rescale,
            clip_x0=self.clip_x0,
        )


@dataclass(frozen=True)
class EMAConfig:
    """EMA of the trainable weights; validation samples and inference use it when enabled."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass(frozen=True)
class ValidationConfig:
    """How much of the validation set is generated (sampling is the expensive part)."""

    sample_batches: int = 2
    loss_timesteps: tuple[int, ...] = field(default=(100, 500, 900))
    #: LPIPS of the generated views: "auto" (when torchvision and its backbone weights are on
    #: this machine), True (required), False; PSNR and SSIM are always scored
    lpips: bool | str = "auto"
    #: also score the sampled views' 3-D consistency (ReprojectionError against the batch's
    #: cameras, the ground truth's floor alongside); SIFT wants >= 128 px and nearby views
    reprojection: bool = False
    #: keyword arguments of pippo_lightning.metrics.ReprojectionError (matcher, pairs, ...)
    reprojection_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_timesteps", tuple(self.loss_timesteps))
        object.__setattr__(self, "reprojection_options", dict(self.reprojection_options))
        if self.lpips not in (True, False, "auto"):
            raise ConfigError(f"validation.lpips must be true, false or auto, got {self.lpips!r}")
        if self.sample_batches < 0:
            raise ConfigError(f"validation.sample_batches must be >= 0, got {self.sample_batches}")


# a stage built from Python objects keeps these as hyperparameters: checkpoints may hold them
register_safe_globals(
    OptimizerConfig, ConditionDropout, SamplingConfig, EMAConfig, ValidationConfig
)
