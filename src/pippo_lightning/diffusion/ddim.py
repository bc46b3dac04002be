"""DDIM sampling (Song et al. 2021) with batched classifier-free guidance.

Timesteps follow diffusers' ``DDIMScheduler(timestep_spacing="leading", steps_offset=1,
set_alpha_to_one=False)``, so trajectories can be checked against it step for step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pippo_lightning.diffusion.guidance import (
    GuidanceScale,
    classifier_free_guidance,
    expand_scale,
    guidance_enabled,
)
from pippo_lightning.diffusion.schedules import NoiseSchedule

# "leading" spacing shifted by one, as in Stable Diffusion: the last step lands on t = 1.
STEPS_OFFSET = 1


class Denoiser(Protocol):
    """The network as the sampler sees it; conditioning is bound in by the caller."""

    def __call__(self, x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        """x_t [N, ...], t long [N], uncond bool [N] (True: drop the conditioning) -> [N, ...]."""
        ...


@dataclass
class DDIMConfig:
    """Sampler settings.

    ``final_denoise``: return the network's clean prediction at the last step instead of x at
    t = 0, which still carries sqrt(1 - ᾱ_0) of noise under ``set_alpha_to_one=False``.
    ``clip_x0``: clamp predicted x0 to [-c, c] and re-derive eps from it (pixel-space models).
    """

    num_steps: int = 50
    eta: float = 0.0
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    clip_x0: float | None = None
    final_denoise: bool = True

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"DDIMConfig.num_steps={self.num_steps}: must be >= 1")
        if self.eta < 0.0:
            raise ValueError(f"DDIMConfig.eta={self.eta}: must be >= 0")
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise ValueError(f"DDIMConfig.cfg_rescale={self.cfg_rescale}: must be in [0, 1]")
        if self.clip_x0 is not None and self.clip_x0 <= 0.0:
            raise ValueError(f"DDIMConfig.clip_x0={self.clip_x0}: must be > 0 or None")


def leading_timesteps(num_train_timesteps: int, num_steps: int) -> Tensor:
    """Descending sampling timesteps, long [num_steps]: k * (T // n) + 1 for k = n-1 … 0."""
    if not 1 <= num_steps < num_train_timesteps:
        # With offset 1, n = T would ask for timestep T, which the schedule does not have.
        raise ValueError(
            f"num_steps={num_steps}: must be in [1, {num_train_timesteps - 1}] for a schedule "
            f"with {num_train_timesteps} timesteps"
        )
    stride = num_train_timesteps // num_steps
    return torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * stride + STEPS_OFFSET


def _as_batch_timesteps(t: int | Tensor, like: Tensor) -> Tensor:
    """An int or [B] tensor of timesteps -> long [B] on ``like``'s device."""
    t = torch.as_tensor(t, dtype=torch.long, device=like.device)
    # repeat, not expand: the denoiser gets its own memory and may modify it in place.
    return t.reshape(1).repeat(like.shape[0]) if t.ndim == 0 else t


class DDIMSampler:
    """Runs the reverse process from pure noise with a fixed set of DDIM timesteps."""

    def __init__(self, schedule: NoiseSchedule, config: DDIMConfig) -> None:
        self.schedule = schedule
        self.config = config
        self.timesteps = leading_timesteps(schedule.num_timesteps, config.num_steps)  # [S]
        # Negative entries mean "before the first training step": ᾱ_prev falls back to ᾱ_0.
        self.prev_timesteps = self.timesteps - schedule.num_timesteps // config.num_steps  # [S]

    def _alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t per sample, [B, 1, ..., 1]; t < 0 reads ᾱ_0 (diffusers' set_alpha_to_one=False)."""
        values = self.schedule.alphas_cumprod_at(t.clamp(min=0), like)  # [B]
        return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal noise like ``like``, drawn on the generator's device for reproducibility."""
        device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
        return noise.to(like.device)

    def _update(
        self,
        x_t: Tensor,
        model_output: Tensor,
        t: Tensor,
        t_prev: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """One DDIM update; returns (x_prev, predicted x0), both like x_t [B, ...]."""
        x0, eps = self.schedule.predict_x0_and_eps(x_t, model_output, t)
        alpha_bar = self._alpha_bar(t, x_t)
        alpha_bar_prev = self._alpha_bar(t_prev, x_t)
        if self.config.clip_x0 is not None:
            x0 = x0.clamp(-self.config.clip_x0, self.config.clip_x0)
            # Keep the update on the line through x_t and the clamped x0.
            eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        # sigma_t of DDIM eq. 16: eta = 1 is ancestral DDPM, eta = 0 deterministic.
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        sigma = self.config.eta * variance.sqrt()
        x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        if self.config.eta > 0:
            x_prev = x_prev + sigma * self._noise(model_output, generator)
        return x_prev.to(x_t.dtype), x0.to(x_t.dtype)

    def step(
        self,
        x_t: Tensor,
        model_output: Tensor,
        t: int | Tensor,
        t_prev: int | Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM update from t to t_prev (t_prev < 0: to ᾱ_0); x_t, model_output [B, ...]."""
        t_batch = _as_batch_timesteps(t, x_t)
        t_prev_batch = _as_batch_timesteps(t_prev, x_t)
        x_prev, _ = self._update(x_t, model_output, t_batch, t_prev_batch, generator)
        return x_prev

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
        steps: Iterable[tuple[Tensor, Tensor]] = zip(self.timesteps, self.prev_timesteps)
        steps = tqdm(steps, total=len(self.timesteps), desc="DDIM", disable=not progress)
        x_t, x0 = noise, noise
        for t, t_prev in steps:
            t_batch = _as_batch_timesteps(t, noise)
            model_output = self.guided_output(denoiser, x_t, t_batch, guidance)
            x_t, x0 = self._update(
                x_t, model_output, t_batch, _as_batch_timesteps(t_prev, noise), generator
            )
        return x0 if self.config.final_denoise else x_t
