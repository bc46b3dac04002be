"""Noise schedules, the diffusion loss, guidance and the DDIM sampler."""

from pippo_lightning.diffusion.ddim import DDIMConfig, DDIMSampler, Denoiser, leading_timesteps
from pippo_lightning.diffusion.guidance import GuidanceScale, classifier_free_guidance
from pippo_lightning.diffusion.loss import DiffusionLoss, offset_noise
from pippo_lightning.diffusion.schedules import NoiseSchedule, ScheduleConfig

__all__ = [
    "DDIMConfig",
    "DDIMSampler",
    "Denoiser",
    "DiffusionLoss",
    "GuidanceScale",
    "NoiseSchedule",
    "ScheduleConfig",
    "classifier_free_guidance",
    "leading_timesteps",
    "offset_noise",
]
