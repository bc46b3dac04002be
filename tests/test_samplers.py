"""The selectable samplers (DDIM, DPM-Solver++ 2M, UniPC): against diffusers' own schedulers,
against an exact denoiser, through the one guided loop, and from the command line."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor

from pippo_lightning.cli.sampler_table import pick_baseline, pick_cheapest
from pippo_lightning.diffusion import (
    DDIMSampler,
    DPMSolverPlusPlus2MSampler,
    NoiseSchedule,
    SamplerConfig,
    ScheduleConfig,
    UniPCSampler,
)
from pippo_lightning.diffusion.guidance import bump_cfg_scale
from pippo_lightning.diffusion.sampling import Sampler, sampler_name
from pippo_lightning.diffusion.schedules import compute_alphas_cumprod
from pippo_lightning.inference.pipeline import generate_views
from pippo_lightning.stages.config import ConfigError, SamplingConfig
from tests.test_diffusion import CountingDenoiser
from tests.test_fidelity_options import make_batch, make_stage

DIFFUSERS_KIND = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
MULTISTEP = {
    "dpmpp_2m": (DPMSolverPlusPlus2MSampler, DPMSolverMultistepScheduler, {"solver_order": 2}),
    "unipc": (UniPCSampler, UniPCMultistepScheduler, {"solver_order": 2, "solver_type": "bh2"}),
}
SAMPLERS = {"ddim": DDIMSampler, **{name: spec[0] for name, spec in MULTISTEP.items()}}


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *[1] * (like.ndim - 1))


def noise_like(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fake_model(alphas_cumprod: Tensor):
    """A deterministic, well-scaled stand-in for a network (as in test_diffusion)."""

    def output(x: Tensor, t: Tensor) -> Tensor:
        t = t.to(torch.long)
        sigma = per_sample((1 - alphas_cumprod[t]).sqrt().to(x.dtype), x)
        return sigma * x + 0.1 * torch.cos(3 * x + per_sample(t.to(x.dtype), x) / 97)

    return output


def diffusers_reference(name: str, config: ScheduleConfig, num_steps: int, **options: Any):
    """diffusers' own scheduler for `name`, built from its own beta schedule (not our table)."""
    _, scheduler_class, solver = MULTISTEP[name]
    if config.shift_ratio != 1.0:  # diffusers has no resolution shift: hand it the shifted ᾱ
        alphas_cumprod = compute_alphas_cumprod(config)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        options["trained_betas"] = (1 - alphas_cumprod / previous).tolist()
    scheduler = scheduler_class(
        num_train_timesteps=config.num_timesteps,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        prediction_type=DIFFUSERS_PREDICTION[config.prediction],
        rescale_betas_zero_snr=config.zero_terminal_snr,
        **solver,
        **options,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def diffusers_trajectory(scheduler, model, noise: Tensor) -> Tensor:
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.repeat(x.shape[0])), t, x).prev_sample
    return x


# ---------------------------------------------------------------- against diffusers' schedulers

SCHEDULES = [
    ScheduleConfig(prediction="eps"),
    ScheduleConfig(prediction="v"),
    ScheduleConfig(kind="linear", prediction="eps"),
    ScheduleConfig(prediction="v", zero_terminal_snr=True),
    ScheduleConfig(prediction="eps", shift_ratio=4.0),
    ScheduleConfig(prediction="x0"),
]
SCHEDULE_IDS = ["cosine-eps", "cosine-v", "linear-eps", "zero_snr-v", "shifted-eps", "cosine-x0"]


@pytest.mark.parametrize("config", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.parametrize("num_steps", [5, 20])
@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_sampler_reproduces_diffusers_own_scheduler(
    name: str, num_steps: int, config: ScheduleConfig
) -> None:
    reference = diffusers_reference(name, config, num_steps)
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected = diffusers_trajectory(reference, model, noise)

    sampler = MULTISTEP[name][0](NoiseSchedule(config), SamplerConfig(num_steps=num_steps))
    assert torch.equal(sampler.timesteps, reference.timesteps.long())
    ours = sampler.sample(lambda x, t, uncond: model(x, t), noise)
    # the only difference is our ᾱ table (float64, then float32) vs diffusers' float32 cumprod
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_sampler_steps_once_like_diffusers(name: str) -> None:
    """One step from the same state and the same history: the update itself matches."""
    config = ScheduleConfig(prediction="v")
    sampler = MULTISTEP[name][0](NoiseSchedule(config), SamplerConfig(num_steps=10))
    reference = diffusers_reference(name, config, 10)
    model = fake_model(reference.alphas_cumprod)
    x = noise_like((2, 4, 8, 8), 1)
    sampler.begin()
    for index, t in enumerate(sampler.timesteps[:4]):
        output = model(x, t.repeat(2))
        expected = reference.step(output, t, x).prev_sample
        ours = sampler.advance(x, output, index, None)
        torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)
        x = expected


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_clip_x0_matches_diffusers_thresholding_at_one(name: str) -> None:
    """diffusers' dynamic thresholding with sample_max_value=1 is a plain clamp to [-1, 1]."""
    config = ScheduleConfig(prediction="v")
    reference = diffusers_reference(
        name, config, 8, thresholding=True, sample_max_value=1.0, dynamic_thresholding_ratio=0.5
    )
    alphas_cumprod = reference.alphas_cumprod
    noise = noise_like((2, 4, 8, 8))

    def loud(x: Tensor, t: Tensor) -> Tensor:
        """The v of an x0 prediction up to 3 in size, well outside [-1, 1]."""
        signal = per_sample(alphas_cumprod[t].sqrt(), x)
        sigma = per_sample((1 - alphas_cumprod[t]).sqrt(), x)
        x0 = 3 * torch.cos(2 * x + per_sample(t.float(), x) / 97)
        return signal * (x - signal * x0) / sigma - sigma * x0

    expected = diffusers_trajectory(reference, loud, noise)
    sampler = MULTISTEP[name][0](NoiseSchedule(config), SamplerConfig(num_steps=8, clip_x0=1.0))
    ours = sampler.sample(lambda x, t, uncond: loud(x, t), noise)
    unclipped = MULTISTEP[name][0](NoiseSchedule(config), SamplerConfig(num_steps=8))
    assert ours.abs().max() <= 1.0 + 1e-5
    assert unclipped.sample(lambda x, t, uncond: loud(x, t), noise).abs().max() > 1.5
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_final_denoise_off_stops_at_the_first_timestep(name: str) -> None:
    config = ScheduleConfig()
    reference = diffusers_reference(name, config, 10, final_sigmas_type="sigma_min")
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected = diffusers_trajectory(reference, model, noise)
    settings = SamplerConfig(num_steps=10, final_denoise=False)
    ours = MULTISTEP[name][0](NoiseSchedule(config), settings).sample(
        lambda x, t, uncond: model(x, t), noise
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_sampler_refuses_eta_and_too_many_steps(name: str) -> None:
    schedule = NoiseSchedule(ScheduleConfig())
    with pytest.raises(ValueError, match=rf"eta=0.5: sampler '{name}' is a deterministic"):
        MULTISTEP[name][0](schedule, SamplerConfig(eta=0.5))
    with pytest.raises(ValueError, match=r"num_steps=1001: must be in \[1, 1000\]"):
        MULTISTEP[name][0](schedule, SamplerConfig(num_steps=1001))


# ---------------------------------------------------------------- an exact denoiser


def gaussian_denoiser(schedule: NoiseSchedule, mean: Tensor, std: Tensor):
    """The exact network for data x0 ~ N(mean, diag(std²)): E[x0 | x_t] is closed-form, so the
    sampler's ODE error is all that separates a sample from the exact flow of its noise."""

    def denoise(x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        signal, sigma = schedule.coefficients(t, x_t)
        gain = signal * std**2 / (signal**2 * std**2 + sigma**2)
        x0 = mean + gain * (x_t - signal * mean)
        eps = (x_t - signal * x0) / sigma
        return schedule.training_target(x0, eps, t)

    return denoise


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_multistep_samplers_approach_ddim_250_faster_than_ddim(prediction: str) -> None:
    schedule = NoiseSchedule(ScheduleConfig(prediction=prediction))
    shape = (4, 3, 8, 8)
    mean = torch.linspace(-0.6, 0.6, 8).repeat(4, 3, 8, 1).double()
    std = torch.linspace(0.05, 0.5, 8).reshape(8, 1).repeat(4, 3, 1, 8).double()
    denoiser = gaussian_denoiser(schedule, mean, std)
    noise = noise_like(shape, dtype=torch.float64)
    reference = DDIMSampler(schedule, SamplerConfig(num_steps=250)).sample(denoiser, noise)

    def error(name: str, steps: int) -> float:
        sampler = SAMPLERS[name](schedule, SamplerConfig(num_steps=steps))
        return (sampler.sample(denoiser, noise) - reference).pow(2).mean().sqrt().item()

    # measured: 0.72x DDIM's error at 10 steps, 0.57x at 15, 0.49x at 20 (both solvers)
    for steps, ratio in ((10, 0.8), (15, 0.65), (20, 0.6)):
        ddim = error("ddim", steps)
        for name in MULTISTEP:
            assert error(name, steps) < ratio * ddim, (name, steps, error(name, steps), ddim)
    # and they converge: 20 steps land closer than 10
    for name in MULTISTEP:
        assert error(name, 20) < error(name, 10)


# ---------------------------------------------------------------- the one guided loop


def two_pass_reference(
    sampler: Sampler, denoiser: CountingDenoiser, noise: Tensor, scale: Tensor, phi: float
) -> Tensor:
    """CFG the slow, obvious way: two calls per step, per-view scale and rescale written out."""
    x = noise
    batch = noise.shape[0]
    scale = scale.reshape(*scale.shape, *[1] * (noise.ndim - scale.ndim))
    sampler.begin()
    for index, t in enumerate(sampler.timesteps):
        t_batch = t.repeat(batch)
        cond = denoiser(x, t_batch, torch.zeros(batch, dtype=torch.bool))
        uncond = denoiser(x, t_batch, torch.ones(batch, dtype=torch.bool))
        guided = uncond + scale * (cond - uncond)
        dims = list(range(1, x.ndim))
        rescaled = guided * cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = phi * rescaled + (1 - phi) * guided
        x = sampler.advance(x, guided, index, None)
    return x


@pytest.mark.parametrize("phi", [0.0, 0.7])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_batched_bump_cfg_equals_two_passes_for_every_sampler(name: str, phi: float) -> None:
    schedule = NoiseSchedule(ScheduleConfig(prediction="v"))
    config = SamplerConfig(num_steps=6, cfg_rescale=phi, clip_x0=1.0)
    sampler = SAMPLERS[name](schedule, config)
    noise = noise_like((2, 3, 4, 8, 8))  # [B, NV, C, H, W]
    scale = bump_cfg_scale(torch.tensor([[0.0, 120.0, 300.0]]), peak=4.0, floor=1.5).expand(2, 3)
    batched = CountingDenoiser(schedule.alphas_cumprod)
    ours = sampler.sample(batched, noise, cfg_scale=scale)

    assert len(batched.calls) == config.num_steps  # one network call per step
    for rows, uncond in batched.calls:
        assert rows == 4 and torch.equal(uncond, torch.tensor([False, False, True, True]))
    reference = two_pass_reference(
        sampler, CountingDenoiser(schedule.alphas_cumprod), noise, scale, phi
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_sampler_starts_afresh_every_call(name: str) -> None:
    schedule = NoiseSchedule(ScheduleConfig())
    sampler = SAMPLERS[name](schedule, SamplerConfig(num_steps=7, cfg_scale=2.0))
    denoiser = CountingDenoiser(schedule.alphas_cumprod)
    first = sampler.sample(denoiser, noise_like((2, 4, 8, 8)))
    sampler.sample(denoiser, noise_like((2, 4, 8, 8), seed=5))
    assert torch.equal(sampler.sample(denoiser, noise_like((2, 4, 8, 8))), first)


def test_multistep_sampler_keeps_x_in_its_dtype_with_a_bf16_network() -> None:
    schedule = NoiseSchedule(ScheduleConfig(prediction="v"))
    model = fake_model(schedule.alphas_cumprod)
    sampler = DPMSolverPlusPlus2MSampler(schedule, SamplerConfig(num_steps=5))
    out = sampler.sample(lambda x, t, u: model(x, t).bfloat16(), noise_like((2, 4, 8, 8)))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---------------------------------------------------------------- configs and the stage


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("config_name", ["train", "generate", "evaluate"])
def test_sampler_composes_from_the_command_line(
    compose_config, config_name: str, name: str
) -> None:
    extra = {"train": [], "generate": ["ckpt=/x.ckpt", "photo=/x.png"], "evaluate": ["ckpt=/x"]}
    cfg = compose_config(f"sampler={name}", *extra[config_name], config_name=config_name)
    factory = instantiate(cfg.sampler)
    assert isinstance(factory, functools.partial) and factory.func is SAMPLERS[name]
    assert sampler_name(factory) == name
    sampler = factory(NoiseSchedule(ScheduleConfig()), SamplerConfig(num_steps=4))
    assert isinstance(sampler, SAMPLERS[name]) and len(sampler.timesteps) == 4


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_stage_validation_samples_with_the_chosen_sampler(compose_config, name: str) -> None:
    cfg = compose_config(f"sampler={name}", "image_size=16", "num_views=2")
    stage = instantiate(cfg.stage, compressor=instantiate(cfg.compressor))
    sampler = stage.build_sampler(SamplingConfig(num_steps=3))
    assert isinstance(sampler, SAMPLERS[name])
    # pippo-generate / pippo-eval hand their own choice in, over the stage's
    other = "ddim" if name != "ddim" else "unipc"
    chosen = stage.build_sampler(SamplingConfig(num_steps=3), functools.partial(SAMPLERS[other]))
    assert isinstance(chosen, SAMPLERS[other])


def test_stage_refuses_eta_with_an_ode_solver_when_built(compose_config) -> None:
    cfg = compose_config("sampler=dpmpp_2m", "image_size=16", "stage.sampling.eta=0.3")
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.stage, compressor=instantiate(cfg.compressor))
    assert isinstance(info.value.__cause__, ConfigError)
    assert "sampling: SamplerConfig.eta=0.3: sampler 'dpmpp_2m'" in str(info.value.__cause__)


def test_sampler_name_reads_classes_and_partials() -> None:
    assert sampler_name(DDIMSampler) == "ddim"
    assert sampler_name(functools.partial(UniPCSampler, solver_order=3)) == "unipc"


def test_sampler_table_picks_the_fewest_steps_within_the_tolerance() -> None:
    def row(sampler: str, steps: int, gt: float, ref: float) -> dict[str, Any]:
        return {"sampler": sampler, "steps": steps, "psnr_gt": gt, "psnr_vs_reference": ref}

    rows = [
        row("ddim", 10, 18.0, 25.0),
        row("ddim", 50, 19.0, 35.0),
        row("unipc", 5, 18.4, 26.0),
        row("unipc", 10, 18.9, 33.0),
        row("dpmpp_2m", 10, 18.7, 34.8),
        row("dpmpp_2m", 20, 19.1, 36.0),
    ]
    baseline = pick_baseline(rows, "ddim", 50)
    # 10 steps is the fewest within 0.5 dB of DDIM-50; of those, dpmpp_2m is nearest DDIM-250
    assert pick_cheapest(rows, baseline, 0.5) == row("dpmpp_2m", 10, 18.7, 34.8)
    rows.append(row("unipc", 5, 18.6, 34.0))
    assert pick_cheapest(rows, baseline, 0.5) == row("unipc", 5, 18.6, 34.0)
    both = pick_cheapest(rows, baseline, 0.5, keys=("psnr_gt", "psnr_vs_reference"))
    assert both == row("dpmpp_2m", 10, 18.7, 34.8)
    with pytest.raises(ConfigError, match=r"table.baseline=ddim-25 is not measured"):
        pick_baseline(rows, "ddim", 25)


def test_generation_runs_the_sampler_it_is_given_with_attention_biasing_and_bump_cfg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage = make_stage(sampler=DDIMSampler)
    built: list[Sampler] = []

    def unipc(schedule: NoiseSchedule, config: SamplerConfig) -> Sampler:
        built.append(UniPCSampler(schedule, config))
        return built[-1]

    scales: list[Any] = []
    denoise = stage.denoise

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        scales.append(args[4])
        return denoise(*args, **kwargs)

    monkeypatch.setattr(stage, "denoise", spy)
    sampling = SamplingConfig(
        num_steps=3, cfg_scale=3.0, cfg_schedule="bump", attention_gamma=1.5, clip_x0=1.0
    )
    images = generate_views(stage, make_batch(views=3), sampling, sampler=unipc)
    assert len(built) == 1 and list(built[0].timesteps) == [999, 666, 333]
    assert images.shape == (2, 3, 3, 16, 16) and torch.isfinite(images).all()
    assert len(scales) == 3 and scales[0] is not None  # biased attention, one call per step
    # without a sampler of its own the stage's (DDIM here) samples: other timesteps, other images
    again = generate_views(stage, make_batch(views=3), sampling)
    assert len(built) == 1 and not torch.allclose(again, images)
