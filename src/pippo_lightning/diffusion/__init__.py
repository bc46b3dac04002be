"""Noise schedules, the diffusion loss, guidance and the samplers (DDIM, DPM-Solver++ 2M, UniPC)."""

from pippo_lightning.diffusion.ddim import DDIMConfig, DDIMSampler, Denoiser, leading_timesteps
from pippo_lightning.diffusion.guidance import GuidanceScale, classifier_free_guidance
from pippo_lightning.diffusion.loss import DiffusionLoss, offset_noise
from pippo_lightning.diffusion.multistep import DPMSolverPlusPlus2MSampler, UniPCSampler
from pippo_lightning.diffusion.sampling import Sampler, SamplerConfig, SamplerFactory
from pippo_lightning.diffusion.schedules import NoiseSchedule, ScheduleConfig

__all__ = [
    "DDIMConfig",
    "DDIMSampler",
    "DPMSolverPlusPlus2MSampler",
    "Denoiser",
    "DiffusionLoss",
    "GuidanceScale",
    "NoiseSchedule",
    "Sampler",
    "SamplerConfig",
    "SamplerFactory",
    "ScheduleConfig",
    "UniPCSampler",
    "classifier_free_guidance",
    "leading_timesteps",
    "offset_noise",
]
