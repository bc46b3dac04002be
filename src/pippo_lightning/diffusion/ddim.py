"""DDIM sampling (Song et al. 2021): its timesteps and its update (the loop and the batched
classifier-free guidance are `sampling.Sampler`'s, shared with the other samplers).

Timesteps follow diffusers' ``DDIMScheduler(timestep_spacing="leading", steps_offset=1,
set_alpha_to_one=False)``, so trajectories can be checked against it step for step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from pippo_lightning.diffusion.sampling import (
    Denoiser,
    Sampler,
    SamplerConfig,
    batch_timesteps,
)
from pippo_lightning.diffusion.schedules import NoiseSchedule

__all__ = ["DDIMConfig", "DDIMSampler", "Denoiser", "leading_timesteps"]

# "leading" spacing shifted by one, as in Stable Diffusion: the last step lands on t = 1.
STEPS_OFFSET = 1

#: DDIM's settings are every sampler's (the name predates the other samplers).
DDIMConfig = SamplerConfig


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


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) on a fixed set of "leading" timesteps; eta > 0 adds noise."""

    name: ClassVar[str] = "ddim"

    def __init__(self, schedule: NoiseSchedule, config: SamplerConfig) -> None:
        super().__init__(schedule, config)
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
        t_batch = batch_timesteps(t, x_t)
        t_prev_batch = batch_timesteps(t_prev, x_t)
        x_prev, _ = self._update(x_t, model_output, t_batch, t_prev_batch, generator)
        return x_prev

    def begin(self) -> None:
        """DDIM keeps no state between steps."""

    def advance(
        self, x_t: Tensor, model_output: Tensor, index: int, generator: torch.Generator | None
    ) -> Tensor:
        x_prev, x0 = self._update(
            x_t,
            model_output,
            batch_timesteps(self.timesteps[index], x_t),
            batch_timesteps(self.prev_timesteps[index], x_t),
            generator,
        )
        if index == len(self.timesteps) - 1 and self.config.final_denoise:
            return x0
        return x_prev
