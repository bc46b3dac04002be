"""Discrete DDPM noise schedules: ᾱ_t tables, forward noising, and the eps / v / x0 parameterisations.

Everything is derived from one table, ``alphas_cumprod`` (ᾱ_t, t = 0 … T-1), which is built in
float64 and stored in float32, so the schedule matches diffusers' ``DDPMScheduler`` for the same
settings and stays exact when the host model is cast to bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SCHEDULE_KINDS = ("cosine", "linear", "scaled_linear")
PREDICTIONS = ("eps", "v", "x0")

# x0 prediction recovers eps as (x_t - sqrt(ᾱ) x0) / sqrt(1 - ᾱ); near t = 0 that divides by
# ~0.006 (cosine), so the noise level used for the division is floored here.
MIN_SIGMA_FOR_EPS = 1e-3

# The cosine schedule caps each beta so ᾱ never collapses to exactly zero before t = T-1
# (Nichol & Dhariwal 2021; diffusers calls this schedule "squaredcos_cap_v2").
COSINE_MAX_BETA = 0.999
COSINE_OFFSET = 0.008


@dataclass(frozen=True)
class ScheduleConfig:
    """Which ᾱ_t table to build and what the network predicts."""

    kind: str = "cosine"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction: str = "eps"
    shift_ratio: float = 1.0
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"ScheduleConfig.kind={self.kind!r}: expected one of {SCHEDULE_KINDS}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"ScheduleConfig.prediction={self.prediction!r}: expected one of {PREDICTIONS}"
            )
        if self.num_timesteps < 2:
            raise ValueError(f"ScheduleConfig.num_timesteps={self.num_timesteps}: must be >= 2")
        if not 0.0 < self.beta_start < 1.0:
            raise ValueError(f"ScheduleConfig.beta_start={self.beta_start}: must be in (0, 1)")
        if not self.beta_start <= self.beta_end < 1.0:
            raise ValueError(
                f"ScheduleConfig.beta_end={self.beta_end}: must be in [beta_start, 1) "
                f"(beta_start={self.beta_start})"
            )
        if not self.shift_ratio > 0.0:
            raise ValueError(f"ScheduleConfig.shift_ratio={self.shift_ratio}: must be > 0")
        if self.zero_terminal_snr and self.prediction == "eps":
            # With ᾱ_{T-1} = 0 the input carries no signal, so x0 cannot be recovered from an
            # eps prediction there (division by sqrt(ᾱ) = 0); Lin et al. 2024 require v.
            raise ValueError(
                f"ScheduleConfig.zero_terminal_snr={self.zero_terminal_snr} needs prediction='v' "
                "or 'x0' "
                f"(got prediction={self.prediction!r})"
            )


def _cosine_alphas_cumprod(num_timesteps: int) -> Tensor:
    """ᾱ_t of the capped cosine schedule, float64 [T]."""

    def alpha_bar(s: Tensor) -> Tensor:
        return torch.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # [T+1]
    betas = (1 - alpha_bar(s[1:]) / alpha_bar(s[:-1])).clamp(max=COSINE_MAX_BETA)  # [T]
    return torch.cumprod(1 - betas, dim=0)


def _linear_betas(config: ScheduleConfig) -> Tensor:
    """Betas of the linear kinds, float64 [T] (diffusers' meanings of beta_start / beta_end)."""
    if config.kind == "linear":
        return torch.linspace(
            config.beta_start, config.beta_end, config.num_timesteps, dtype=torch.float64
        )
    # "scaled_linear" (Stable Diffusion): linear in sqrt(beta).
    sqrt_betas = torch.linspace(
        config.beta_start**0.5, config.beta_end**0.5, config.num_timesteps, dtype=torch.float64
    )
    return sqrt_betas**2


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Affinely rescale sqrt(ᾱ) so ᾱ_0 is kept and ᾱ_{T-1} becomes exactly 0 (Lin et al. 2024).

    Equivalent to diffusers' beta rescaling, done on ᾱ directly because that is all we store.
    """
    sqrt_ac = alphas_cumprod.sqrt()  # [T]
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    return ((sqrt_ac - last) * (first / (first - last))) ** 2


def shift_alphas_cumprod(alphas_cumprod: Tensor, ratio: float) -> Tensor:
    """Resolution shift ᾱ' = ᾱ / (r + (1 - r) ᾱ).

    With r = pixel count / 256², a larger image keeps more signal under the same noise, so its
    schedule must add more noise at every step to stay as hard (SD3's shift, written for ᾱ).
    Fixed points: ᾱ = 0 and ᾱ = 1; r = 1 is the identity.
    """
    return alphas_cumprod / (ratio + (1.0 - ratio) * alphas_cumprod)


def compute_alphas_cumprod(config: ScheduleConfig) -> Tensor:
    """The ᾱ_t table for a config, float64 [T]."""
    if config.kind == "cosine":
        alphas_cumprod = _cosine_alphas_cumprod(config.num_timesteps)
    else:
        alphas_cumprod = torch.cumprod(1 - _linear_betas(config), dim=0)
    if config.zero_terminal_snr:
        alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
    if config.shift_ratio != 1.0:
        alphas_cumprod = shift_alphas_cumprod(alphas_cumprod, config.shift_ratio)
    return alphas_cumprod


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] so it broadcasts against ``like`` [B, ...]."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class NoiseSchedule(nn.Module):
    """A DDPM schedule: forward noising q(x_t | x_0) and conversions between eps, v and x0.

    Holds buffers only (no parameters), so it moves with ``.to(device)``. The buffer is not
    persistent: it is a pure function of the config, and keeping it out of checkpoints means a
    checkpoint can never silently override the configured schedule.
    """

    alphas_cumprod: Tensor

    def __init__(self, config: ScheduleConfig) -> None:
        super().__init__()
        self.config = config
        table = compute_alphas_cumprod(config).to(torch.float32)
        self.register_buffer("alphas_cumprod", table, persistent=False)  # [T]

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def prediction(self) -> str:
        return self.config.prediction

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> NoiseSchedule:
        # ``model.to(torch.bfloat16)`` would quantise ᾱ (bf16 has ~3 significant digits), which
        # visibly shifts the late DDIM steps. Keep the device change, rebuild the values in fp32.
        super()._apply(fn, recurse)
        if self.alphas_cumprod.dtype != torch.float32:
            device = self.alphas_cumprod.device
            table = compute_alphas_cumprod(self.config).to(device=device, dtype=torch.float32)
            self.alphas_cumprod = table
        return self

    def alphas_cumprod_at(self, t: Tensor, like: Tensor) -> Tensor:
        """ᾱ_t [B] on ``like``'s device, in fp32 or ``like``'s dtype if wider.

        Widening before any sqrt keeps sqrt(ᾱ)² + sqrt(1-ᾱ)² = 1 to float64 precision for
        float64 work, while bf16 work still gets fp32 coefficients.
        """
        table = self.alphas_cumprod
        dtype = torch.promote_types(table.dtype, like.dtype)
        return table[t.to(table.device, torch.long)].to(like.device, dtype)

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(ᾱ_t), sqrt(1 - ᾱ_t)) shaped [B, 1, ..., 1] on ``like``'s device."""
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(
                f"t must be a 1-D tensor with one timestep per sample: got t.shape={tuple(t.shape)} "
                f"for a batch of shape {tuple(like.shape)}"
            )
        alpha_bar = self.alphas_cumprod_at(t, like)  # [B]
        return _per_sample(alpha_bar.sqrt(), like), _per_sample((1 - alpha_bar).sqrt(), like)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise; x0, noise [B, ...], t long [B]."""
        signal, sigma = self.coefficients(t, x0)
        return (signal * x0 + sigma * noise).to(x0.dtype)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for (x0, noise, t): eps, v = sqrt(ᾱ) eps - sqrt(1-ᾱ) x0,
        or x0 itself (the clean sample: Li & He 2025 find it the one that still learns when a
        token carries as many values as the network is wide, as with large pixel patches)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        signal, sigma = self.coefficients(t, x0)
        return (signal * noise - sigma * x0).to(x0.dtype)

    def predict_x0_and_eps(
        self, x_t: Tensor, model_output: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Recover (x0, eps) from a network output in this schedule's parameterisation."""
        signal, sigma = self.coefficients(t, x_t)
        if self.prediction == "eps":
            eps = model_output
            x0 = (x_t - sigma * eps) / signal
        elif self.prediction == "x0":
            x0 = model_output
            eps = (x_t - signal * x0) / sigma.clamp(min=MIN_SIGMA_FOR_EPS)
        else:
            # v-prediction stays finite at ᾱ = 0, which is what makes zero terminal SNR usable.
            x0 = signal * x_t - sigma * model_output
            eps = signal * model_output + sigma * x_t
        return x0, eps

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), [B] (e.g. for min-SNR loss weighting)."""
        alpha_bar = self.alphas_cumprod[t.to(self.alphas_cumprod.device, torch.long)]
        return (alpha_bar / (1 - alpha_bar)).to(t.device)

    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniform training timesteps in [0, T), long [batch_size].

        Drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved.
        """
        draw_device = generator.device if generator is not None else device
        t = torch.randint(
            0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device
        )
        return t.to(device) if device is not None else t

    def extra_repr(self) -> str:
        return repr(self.config)
