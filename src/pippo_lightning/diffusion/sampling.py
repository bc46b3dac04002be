"""The one sampling loop: noise → sample, with batched classifier-free guidance.

A sampler (DDIM, DPM-Solver++ 2M, UniPC, ...) differs only in which timesteps the network sees
and how x moves from one to the next; that is all a `Sampler` subclass supplies (`timesteps`,
`begin`, `advance`). Guidance — one network call per step over the conditional and
unconditional rows together, a per-view scale schedule, CFG-rescale — lives here once, so every
sampler gets it unchanged. Attention biasing is the denoiser's business (it is bound into the
`Denoiser` the caller passes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from pippo_lightning.diffusion.guidance import (
    GuidanceScale,
    classifier_free_guidance,
    expand_scale,
    guidance_enabled,
)
from pippo_lightning.diffusion.schedules import NoiseSchedule
from pippo_lightning.progress import track


class Denoiser(Protocol):
    """The network as the sampler sees it; conditioning is bound in by the caller."""

    def __call__(self, x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        """x_t [N, ...], t long [N], uncond bool [N] (True: drop the conditioning) -> [N, ...]."""
        ...


@dataclass
class SamplerConfig:
    """Settings every sampler reads.

    ``final_denoise``: return the clean sample at the end instead of x at the last timestep, which
    still carries noise (DDIM: sqrt(1 - ᾱ_0) of it under ``set_alpha_to_one=False``).
    ``clip_x0``: clamp predicted x0 to [-c, c] and re-derive the noise from it (pixel space).
    ``eta``: DDIM's stochasticity (0: deterministic); the multistep ODE solvers refuse eta > 0.
    """

    num_steps: int = 50
    eta: float = 0.0
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    clip_x0: float | None = None
    final_denoise: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"SamplerConfig.num_steps={self.num_steps}: must be >= 1")
        if self.eta < 0.0:
            raise ValueError(f"SamplerConfig.eta={self.eta}: must be >= 0")
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise ValueError(f"SamplerConfig.cfg_rescale={self.cfg_rescale}: must be in [0, 1]")
        if self.clip_x0 is not None and self.clip_x0 <= 0.0:
            raise ValueError(f"SamplerConfig.clip_x0={self.clip_x0}: must be > 0 or None")


def batch_timesteps(t: int | Tensor, like: Tensor) -> Tensor:
    """An int or [B] tensor of timesteps -> long [B] on ``like``'s device."""
    t = torch.as_tensor(t, dtype=torch.long, device=like.device)
    # repeat, not expand: the denoiser gets its own memory and may modify it in place.
    return t.reshape(1).repeat(like.shape[0]) if t.ndim == 0 else t


def clip_model_output(
    schedule: NoiseSchedule, x_t: Tensor, model_output: Tensor, t: Tensor, limit: float
) -> Tensor:
    """The network output whose predicted x0 is clamped to [-limit, limit], in the network's own
    parameterisation (eps, v or x0), so a solver that reads eps / v sees the clipped x0."""
    x0, _ = schedule.predict_x0_and_eps(x_t, model_output, t)
    x0 = x0.clamp(-limit, limit)
    if schedule.prediction == "x0":
        return x0.to(model_output.dtype)
    signal, sigma = schedule.coefficients(t, x_t)
    # Keep the update on the line through x_t and the clamped x0 (as DDIM does).
    eps = (x_t - signal * x0) / sigma
    clipped = eps if schedule.prediction == "eps" else signal * eps - sigma * x0
    return clipped.to(model_output.dtype)


class Sampler(ABC):
    """Runs the reverse process from pure noise; subclasses pick the timesteps and the update.

    ``name`` is what the config group calls it (``sampler=ddim``); ``timesteps`` are the
    network's timesteps in the order they are visited, long [S].
    """

    name: ClassVar[str]
    timesteps: Tensor

    def __init__(self, schedule: NoiseSchedule, config: SamplerConfig) -> None:
        self.schedule = schedule
        self.config = config

    @abstractmethod
    def begin(self) -> None:
        """Forget any state of a previous trajectory (a multistep solver's history)."""

    @abstractmethod
    def advance(
        self, x_t: Tensor, model_output: Tensor, index: int, generator: torch.Generator | None
    ) -> Tensor:
        """x after step ``index`` (at ``timesteps[index]``); after the last step, the sample."""

    def guided_output(
        self, denoiser: Denoiser, x_t: Tensor, t: Tensor, scale: GuidanceScale | None
    ) -> Tensor:
        """The network output at (x_t, t), guided unless ``scale`` is None; one denoiser call.

        With guidance the conditional and unconditional rows travel in one batch [2B, ...] so the
        network runs once per step at twice the batch, instead of two half-full passes.
        """
        batch = x_t.shape[0]
        if scale is None:
            uncond = torch.zeros(batch, dtype=torch.bool, device=x_t.device)
            return denoiser(x_t, t, uncond)
        uncond = torch.arange(2 * batch, device=x_t.device) >= batch  # [2B]: B False, then B True
        both = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), uncond)  # [2B, ...]
        cond_out, uncond_out = both.chunk(2)
        return classifier_free_guidance(cond_out, uncond_out, scale, self.config.cfg_rescale)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        noise: Tensor,
        cfg_scale: GuidanceScale | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Denoise ``noise`` [B, ...] (e.g. [B, NV, C, H, W]) into a sample of the same shape.

        ``cfg_scale``: float, or a tensor over the leading dims (e.g. per-view [B, NV]);
        defaults to the config's scale.
        """
        scale = expand_scale(self.config.cfg_scale if cfg_scale is None else cfg_scale, noise)
        # Decided once: checking a tensor scale every step would sync the GPU every step.
        guidance = scale if guidance_enabled(scale) else None
        self.begin()
        steps: Iterable[tuple[int, Tensor]] = enumerate(self.timesteps)
        if progress:
            steps = track(steps, self.name, total=len(self.timesteps))
        x_t = noise
        for index, t in steps:
            model_output = self.guided_output(denoiser, x_t, batch_timesteps(t, noise), guidance)
            x_t = self.advance(x_t, model_output, index, generator)
        return x_t


#: What the `sampler` config group instantiates (`_partial_: true`): a Sampler class, with its
#: own options bound, still to be given the schedule and the settings.
SamplerFactory = Callable[[NoiseSchedule, SamplerConfig], Sampler]


def sampler_name(factory: SamplerFactory) -> str:
    """The config name of the sampler a factory builds (a class, or a partial of one)."""
    target = getattr(factory, "func", factory)
    name = getattr(target, "name", None)
    return name if isinstance(name, str) else getattr(target, "__name__", repr(target))
