"""Multistep ODE solvers for few-step sampling, on diffusers' schedulers.

DPM-Solver++ 2M (Lu et al. 2022) and UniPC (Zhao et al. 2023) reuse the network outputs of
earlier steps to take larger steps: 10-20 of them come close to what DDIM needs 50-250 for.
Each wraps diffusers' own scheduler, handed *our* noise levels as ``trained_betas`` (so the
cosine table, zero terminal SNR and the resolution shift all carry over exactly) and the
network's parameterisation as ``prediction_type``; the loop, guidance and attention biasing stay
`sampling.Sampler`'s.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from pippo_lightning.diffusion.sampling import Sampler, SamplerConfig, clip_model_output
from pippo_lightning.diffusion.schedules import NoiseSchedule, compute_alphas_cumprod

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: our parameterisation names → diffusers'
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def schedule_betas(schedule: NoiseSchedule) -> list[float]:
    """β_t = 1 - ᾱ_t / ᾱ_{t-1} of the schedule (after zero terminal SNR and the shift), [T].

    Computed in float64 from the same table as ours, so diffusers' float32 cumprod of them
    lands on our ᾱ to float32 rounding.
    """
    alphas_cumprod = compute_alphas_cumprod(schedule.config)  # float64 [T]
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).tolist()


def diffusers_scheduler_options(schedule: NoiseSchedule, config: SamplerConfig) -> dict[str, Any]:
    """The settings every wrapped diffusers scheduler shares: our betas, our prediction type."""
    return {
        "num_train_timesteps": schedule.num_timesteps,
        "trained_betas": schedule_betas(schedule),
        "prediction_type": DIFFUSERS_PREDICTION[schedule.prediction],
        # ᾱ_{T-1} = 0 has an infinite noise level; diffusers then starts at ᾱ = 2^-24 instead
        "rescale_betas_zero_snr": schedule.config.zero_terminal_snr,
        # zero: the last step lands on the clean sample (our final_denoise); sigma_min: on ᾱ_0
        "final_sigmas_type": "zero" if config.final_denoise else "sigma_min",
    }


class DiffusersSampler(Sampler):
    """A diffusers multistep scheduler as a `Sampler`: it picks the timesteps and steps x."""

    def __init__(self, schedule: NoiseSchedule, config: SamplerConfig) -> None:
        super().__init__(schedule, config)
        if config.eta != 0.0:
            raise ValueError(
                f"SamplerConfig.eta={config.eta}: sampler {self.name!r} is a deterministic ODE "
                "solver; eta applies to sampler=ddim only (set sampling.eta=0)"
            )
        if not 1 <= config.num_steps <= schedule.num_timesteps:
            raise ValueError(
                f"SamplerConfig.num_steps={config.num_steps}: must be in "
                f"[1, {schedule.num_timesteps}] for a schedule with {schedule.num_timesteps} "
                "timesteps"
            )
        self.scheduler = self.make_scheduler(diffusers_scheduler_options(schedule, config))
        self.begin()
        self.timesteps = self.scheduler.timesteps.to(torch.long)  # [S], descending

    @abstractmethod
    def make_scheduler(self, options: dict[str, Any]) -> SchedulerMixin:
        """The diffusers scheduler with the shared ``options`` and the solver's own."""

    def begin(self) -> None:
        # set_timesteps also clears the scheduler's history of earlier outputs and its step index
        self.scheduler.set_timesteps(self.config.num_steps)

    def advance(
        self, x_t: Tensor, model_output: Tensor, index: int, generator: torch.Generator | None
    ) -> Tensor:
        t = self.timesteps[index]
        if self.config.clip_x0 is not None:
            t_batch = t.reshape(1).repeat(x_t.shape[0]).to(x_t.device)
            model_output = clip_model_output(
                self.schedule, x_t, model_output, t_batch, self.config.clip_x0
            )
        return self.scheduler.step(model_output, t, x_t, return_dict=False)[0]


class DPMSolverPlusPlus2MSampler(DiffusersSampler):
    """DPM-Solver++ 2M: second-order multistep in x0 (data) prediction; first order at the ends."""

    name: ClassVar[str] = "dpmpp_2m"

    def __init__(
        self,
        schedule: NoiseSchedule,
        config: SamplerConfig,
        timestep_spacing: str = "linspace",
    ) -> None:
        self.timestep_spacing = timestep_spacing
        super().__init__(schedule, config)

    def make_scheduler(self, options: dict[str, Any]) -> SchedulerMixin:
        from diffusers import DPMSolverMultistepScheduler  # deferred: importing diffusers is slow

        return DPMSolverMultistepScheduler(
            **options,
            algorithm_type="dpmsolver++",
            solver_order=2,
            timestep_spacing=self.timestep_spacing,
        )


class UniPCSampler(DiffusersSampler):
    """UniPC: a predictor-corrector multistep solver (bh2), order 2 by default for guided use."""

    name: ClassVar[str] = "unipc"

    def __init__(
        self,
        schedule: NoiseSchedule,
        config: SamplerConfig,
        solver_order: int = 2,
        timestep_spacing: str = "linspace",
    ) -> None:
        self.solver_order = solver_order
        self.timestep_spacing = timestep_spacing
        super().__init__(schedule, config)

    def make_scheduler(self, options: dict[str, Any]) -> SchedulerMixin:
        from diffusers import UniPCMultistepScheduler  # deferred: importing diffusers is slow

        return UniPCMultistepScheduler(
            **options,
            solver_order=self.solver_order,
            solver_type="bh2",
            predict_x0=True,
            timestep_spacing=self.timestep_spacing,
        )
