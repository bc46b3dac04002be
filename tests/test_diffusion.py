"""Schedules, loss and the DDIM sampler, checked against diffusers and against first principles."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from pippo_lightning.diffusion import (
    DDIMConfig,
    DDIMSampler,
    DiffusionLoss,
    NoiseSchedule,
    ScheduleConfig,
    offset_noise,
)
from pippo_lightning.diffusion.guidance import expand_scale
from pippo_lightning.diffusion.schedules import compute_alphas_cumprod

T = 1000
DIFFUSERS_KIND = {
    "cosine": "squaredcos_cap_v2",
    "linear": "linear",
    "scaled_linear": "scaled_linear",
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
PREDICTIONS = list(DIFFUSERS_PREDICTION)
KINDS = list(DIFFUSERS_KIND)
BETA_RANGES = [(1e-4, 2e-2), (0.00085, 0.012)]  # DDPM's and Stable Diffusion's


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *[1] * (like.ndim - 1))


def diffusers_ddim(config: ScheduleConfig, num_steps: int, **options: object) -> DDIMScheduler:
    scheduler = DDIMScheduler(
        num_train_timesteps=config.num_timesteps,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=DIFFUSERS_PREDICTION[config.prediction],
        timestep_spacing="leading",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
        rescale_betas_zero_snr=config.zero_terminal_snr,
        **options,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


def fake_model(alphas_cumprod: Tensor):
    """A deterministic, well-scaled stand-in for a network: roughly the right noise level plus a
    nonlinear term that depends on x and t, so every coefficient of the update matters."""

    def output(x: Tensor, t: Tensor) -> Tensor:
        sigma = per_sample((1 - alphas_cumprod[t]).sqrt(), x)
        return sigma * x + 0.1 * torch.cos(3 * x + per_sample(t.float(), x) / 97)

    return output


def perfect_denoiser(schedule: NoiseSchedule, x0: Tensor):
    """Knows the clean sample: returns the exact eps / v target implied by (x_t, t, x0)."""

    def denoise(x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        signal, sigma = schedule.coefficients(t, x_t)
        eps = (x_t - signal * x0) / sigma
        return schedule.training_target(x0, eps, t)

    return denoise


def noise_like(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("beta_range", BETA_RANGES)
@pytest.mark.parametrize("kind", KINDS)
def test_alphas_cumprod_match_diffusers(kind: str, beta_range: tuple[float, float]) -> None:
    config = ScheduleConfig(kind=kind, beta_start=beta_range[0], beta_end=beta_range[1])
    reference = DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule=DIFFUSERS_KIND[kind],
        beta_start=beta_range[0],
        beta_end=beta_range[1],
    ).alphas_cumprod
    ours = NoiseSchedule(config).alphas_cumprod
    assert ours.shape == (T,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_terminal_snr_ends_at_zero_and_matches_diffusers(kind: str) -> None:
    config = ScheduleConfig(kind=kind, zero_terminal_snr=True, prediction="v")
    ours = NoiseSchedule(config).alphas_cumprod
    reference = DDPMScheduler(
        num_train_timesteps=T, beta_schedule=DIFFUSERS_KIND[kind], rescale_betas_zero_snr=True
    ).alphas_cumprod
    assert ours[-1].item() == 0.0
    assert torch.all(ours[1:] <= ours[:-1])
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_zero_terminal_snr_v_prediction_recovers_x0_at_the_last_step() -> None:
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True, prediction="v"))
    x0, noise = noise_like((2, 4, 8, 8), 1), noise_like((2, 4, 8, 8), 2)
    t = torch.full((2,), T - 1)
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, noise)  # no signal left
    x0_hat, eps_hat = schedule.predict_x0_and_eps(x_t, schedule.training_target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=10))
    stepped = sampler.step(x_t, schedule.training_target(x0, noise, t), T - 1, T - 1 - 100)
    assert torch.isfinite(stepped).all()


def test_shift_ratio_follows_the_formula() -> None:
    base = NoiseSchedule(ScheduleConfig()).alphas_cumprod.double()
    for ratio in (0.25, 1.0, 4.0, 16.0):
        shifted = NoiseSchedule(ScheduleConfig(shift_ratio=ratio)).alphas_cumprod.double()
        expected = base / (ratio + (1 - ratio) * base)
        torch.testing.assert_close(shifted, expected, rtol=1e-6, atol=1e-7)
    more_pixels = NoiseSchedule(ScheduleConfig(shift_ratio=4.0)).alphas_cumprod
    assert torch.all(more_pixels[1:] < base[1:].float())  # larger images get noisier schedules


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_add_noise_target_and_predict_round_trip(prediction: str) -> None:
    # float64 samples, so even t = 999 (sqrt(ᾱ) ~ 5e-5) round-trips tightly.
    schedule = NoiseSchedule(ScheduleConfig(prediction=prediction))
    x0 = noise_like((5, 2, 3, 4, 4), 1, torch.float64)
    noise = noise_like((5, 2, 3, 4, 4), 2, torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.training_target(x0, noise, t)
    x0_hat, eps_hat = schedule.predict_x0_and_eps(x_t, target, t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_add_noise_and_target_match_diffusers(prediction: str) -> None:
    config = ScheduleConfig(prediction=prediction)
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, 50)
    x0, noise = noise_like((4, 4, 8, 8), 1), noise_like((4, 4, 8, 8), 2)
    t = torch.tensor([0, 10, 500, 999])
    expected_x_t = reference.add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), expected_x_t, rtol=0, atol=1e-5)
    expected = {"eps": noise, "x0": x0}.get(prediction)
    expected = reference.get_velocity(x0, noise, t) if expected is None else expected
    torch.testing.assert_close(schedule.training_target(x0, noise, t), expected, rtol=0, atol=1e-5)


def test_schedule_stays_fp32_when_the_host_model_is_cast() -> None:
    host = torch.nn.Module()
    host.schedule = NoiseSchedule(ScheduleConfig())
    reference = host.schedule.alphas_cumprod.clone()
    host.to(torch.bfloat16)
    assert host.schedule.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(host.schedule.alphas_cumprod, reference, rtol=0, atol=0)
    assert host.state_dict() == {}  # derived from the config, never checkpointed


def test_sample_timesteps_in_range_and_reproducible() -> None:
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=50))
    first = schedule.sample_timesteps(512, generator=torch.Generator().manual_seed(3))
    again = schedule.sample_timesteps(512, generator=torch.Generator().manual_seed(3))
    assert first.dtype == torch.long and first.shape == (512,)
    assert first.min() >= 0 and first.max() <= 49 and len(first.unique()) == 50
    assert torch.equal(first, again)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "quadratic"),
        ("prediction", "sample"),
        ("num_timesteps", 1),
        ("beta_start", 0.0),
        ("beta_end", 1e-5),
        ("shift_ratio", 0.0),
        ("zero_terminal_snr", True),  # with eps prediction
    ],
)
def test_bad_schedule_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"ScheduleConfig\.{field}={value!r}"):
        ScheduleConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_steps", 0), ("eta", -0.1), ("cfg_rescale", 1.5), ("clip_x0", 0.0)],
)
def test_bad_ddim_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SamplerConfig\.{field}={value!r}"):
        DDIMConfig(**{field: value})


# ---------------------------------------------------------------- loss and noise


def test_diffusion_loss_is_mean_mse_with_weights_and_masks() -> None:
    loss = DiffusionLoss()
    prediction, target = noise_like((3, 2, 4, 5, 5), 1), noise_like((3, 2, 4, 5, 5), 2)
    squared = (prediction - target) ** 2
    torch.testing.assert_close(loss(prediction, target), squared.mean())
    per_sample_mse = squared.flatten(1).mean(1)
    torch.testing.assert_close(loss.per_sample(prediction, target), per_sample_mse)
    weight = torch.tensor([1.0, 0.5, 0.0])
    torch.testing.assert_close(
        loss(prediction, target, weight=weight), (per_sample_mse * weight).mean()
    )
    # Masking view 1 of every sample: the loss is the MSE of view 0 alone, not half of it.
    mask = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1).expand(3, 2, 1, 1, 1)
    torch.testing.assert_close(loss(prediction, target, mask=mask), squared[:, 0].mean())
    with pytest.raises(ValueError, match="differ"):
        loss(prediction, target[:, :1])


def test_offset_noise_adds_a_per_channel_constant() -> None:
    shape = (2, 3, 4, 8, 8)
    plain = offset_noise(shape, 0.0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(plain, noise_like(shape, 5), rtol=0, atol=0)
    shifted = offset_noise(shape, 0.1, torch.Generator().manual_seed(5))
    offset = shifted - plain  # [B, NV, C, H, W], constant over H, W
    assert torch.allclose(offset, offset[..., :1, :1].expand_as(offset), atol=1e-6)
    assert offset[..., 0, 0].abs().min() > 0


# ---------------------------------------------------------------- DDIM vs diffusers


@pytest.mark.parametrize("num_steps", [1, 10, 50, 999])
def test_timesteps_match_diffusers_leading_offset_one(num_steps: int) -> None:
    sampler = DDIMSampler(NoiseSchedule(ScheduleConfig()), DDIMConfig(num_steps=num_steps))
    reference = diffusers_ddim(ScheduleConfig(), num_steps).timesteps
    assert torch.equal(sampler.timesteps, reference)


def test_num_steps_equal_to_t_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_steps=1000"):
        DDIMSampler(NoiseSchedule(ScheduleConfig()), DDIMConfig(num_steps=T))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_one_ddim_step_matches_diffusers(kind: str, prediction: str) -> None:
    config = ScheduleConfig(kind=kind, prediction=prediction)
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, 50)
    if prediction == "x0":
        # eps = (x_t - sqrt(ᾱ) x0) / sqrt(1 - ᾱ) divides by ~0.015 on the last step, which turns
        # the float32 rounding between the two ᾱ tables (~6e-8) into ~4e-4: compare the update
        reference.alphas_cumprod = schedule.alphas_cumprod.clone()
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=50))
    x_t, output = noise_like((2, 4, 8, 8), 1), noise_like((2, 4, 8, 8), 2)
    for index in (0, 25, 49):  # first, middle, last (whose t_prev < 0)
        t, t_prev = int(sampler.timesteps[index]), int(sampler.prev_timesteps[index])
        expected = reference.step(output, t, x_t).prev_sample
        ours = sampler.step(x_t, output, t, t_prev)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def _diffusers_trajectory(
    reference: DDIMScheduler, model, noise: Tensor, eta: float = 0.0, seed: int | None = None
) -> tuple[Tensor, Tensor]:
    """(x at t = 0, last x0 prediction) from diffusers' own loop."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    x = noise
    for t in reference.timesteps:
        out = reference.step(model(x, t.repeat(x.shape[0])), t, x, eta=eta, generator=generator)
        x = out.prev_sample
    return x, out.pred_original_sample


@pytest.mark.parametrize("shared_table", [False, True])
@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind", KINDS)
def test_ddim_trajectory_matches_diffusers(
    kind: str, prediction: str, num_steps: int, shared_table: bool
) -> None:
    config = ScheduleConfig(kind=kind, prediction=prediction)
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, num_steps)
    if shared_table:  # isolates the sampler from the schedules' float32 rounding
        reference.alphas_cumprod = schedule.alphas_cumprod.clone()
        reference.final_alpha_cumprod = reference.alphas_cumprod[0]
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected_x, expected_x0 = _diffusers_trajectory(reference, model, noise)
    tolerance = 1e-6 if shared_table else 1e-5
    for final_denoise, expected in ((False, expected_x), (True, expected_x0)):
        sampler = DDIMSampler(
            schedule, DDIMConfig(num_steps=num_steps, final_denoise=final_denoise)
        )
        ours = sampler.sample(lambda x, t, uncond: model(x, t), noise)
        torch.testing.assert_close(ours, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("num_steps", [20, 25, 100, 250])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_trajectory_matches_diffusers_for_more_step_counts(
    prediction: str, num_steps: int
) -> None:
    config = ScheduleConfig(prediction=prediction)
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, num_steps)
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected, _ = _diffusers_trajectory(reference, model, noise)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=num_steps, final_denoise=False))
    ours = sampler.sample(lambda x, t, uncond: model(x, t), noise)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_terminal_snr_v_trajectory_matches_diffusers(kind: str) -> None:
    config = ScheduleConfig(kind=kind, prediction="v", zero_terminal_snr=True)
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, 25)
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected, _ = _diffusers_trajectory(reference, model, noise)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=25, final_denoise=False))
    ours = sampler.sample(lambda x, t, uncond: model(x, t), noise)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_shifted_schedule_trajectory_matches_diffusers_with_the_same_betas(
    prediction: str,
) -> None:
    """diffusers has no resolution shift: hand it the shifted ᾱ as betas and compare."""
    config = ScheduleConfig(prediction=prediction, shift_ratio=4.0)
    schedule = NoiseSchedule(config)
    alphas_cumprod = compute_alphas_cumprod(config)  # float64 [T]
    alphas = alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    reference = diffusers_ddim(config, 50, trained_betas=(1 - alphas).tolist())
    torch.testing.assert_close(reference.alphas_cumprod, schedule.alphas_cumprod, rtol=0, atol=1e-6)
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected, _ = _diffusers_trajectory(reference, model, noise)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=50, final_denoise=False))
    ours = sampler.sample(lambda x, t, uncond: model(x, t), noise)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_ddim_with_eta_matches_diffusers_and_reproduces() -> None:
    config = ScheduleConfig(prediction="v")
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, 10)
    model = fake_model(reference.alphas_cumprod)
    noise = noise_like((2, 4, 8, 8))
    expected, _ = _diffusers_trajectory(reference, model, noise, eta=0.7, seed=11)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=10, eta=0.7, final_denoise=False))

    def run(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sampler.sample(lambda x, t, uncond: model(x, t), noise, generator=generator)

    torch.testing.assert_close(run(11), expected, rtol=0, atol=1e-5)
    assert torch.equal(run(11), run(11))
    assert not torch.allclose(run(11), run(12))


def test_clip_x0_matches_diffusers_with_clipped_model_output() -> None:
    config = ScheduleConfig()
    schedule, reference = NoiseSchedule(config), diffusers_ddim(config, 10)
    reference.config.clip_sample, reference.config.clip_sample_range = True, 0.5
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=10, clip_x0=0.5))
    x_t, output = noise_like((2, 4, 8, 8), 1), noise_like((2, 4, 8, 8), 2)
    t, t_prev = int(sampler.timesteps[5]), int(sampler.prev_timesteps[5])
    expected = reference.step(output, t, x_t, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(sampler.step(x_t, output, t, t_prev), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- DDIM behaviour


@pytest.mark.parametrize(
    "config",
    [
        ScheduleConfig(prediction="eps"),
        ScheduleConfig(prediction="v"),
        ScheduleConfig(kind="scaled_linear", beta_start=0.00085, beta_end=0.012),
        ScheduleConfig(prediction="v", zero_terminal_snr=True, shift_ratio=4.0),
        ScheduleConfig(prediction="x0"),
        ScheduleConfig(prediction="x0", zero_terminal_snr=True, shift_ratio=4.0),
    ],
    ids=[
        "cosine-eps",
        "cosine-v",
        "scaled_linear-eps",
        "zero_snr-shifted-v",
        "cosine-x0",
        "zero_snr-shifted-x0",
    ],
)
def test_perfect_denoiser_recovers_the_clean_sample(config: ScheduleConfig) -> None:
    schedule = NoiseSchedule(config)
    x0 = noise_like((2, 3, 4, 8, 8), 1).clamp(-2, 2)
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=20))
    first = sampler.sample(perfect_denoiser(schedule, x0), noise_like((2, 3, 4, 8, 8), 2))
    again = sampler.sample(perfect_denoiser(schedule, x0), noise_like((2, 3, 4, 8, 8), 2))
    torch.testing.assert_close(first, x0, rtol=0, atol=1e-4)
    assert torch.equal(first, again)  # eta = 0 is deterministic


class CountingDenoiser:
    """Elementwise fake network whose output depends on the uncond flag; records every call."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.model = fake_model(alphas_cumprod)
        self.calls: list[tuple[int, Tensor]] = []

    def __call__(self, x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        self.calls.append((x_t.shape[0], uncond.clone()))
        conditioning = per_sample((~uncond).float(), x_t) * 0.3 * torch.sin(2 * x_t)
        return self.model(x_t, t) + conditioning


def _two_pass_reference(
    sampler: DDIMSampler, denoiser: CountingDenoiser, noise: Tensor, scale: float, phi: float
) -> Tensor:
    """CFG the slow, obvious way: two separate calls per step, rescale written out."""
    x = noise
    batch = noise.shape[0]
    for t, t_prev in zip(sampler.timesteps, sampler.prev_timesteps):
        t_batch = t.repeat(batch)
        cond = denoiser(x, t_batch, torch.zeros(batch, dtype=torch.bool))
        uncond = denoiser(x, t_batch, torch.ones(batch, dtype=torch.bool))
        guided = uncond + scale * (cond - uncond)
        dims = list(range(1, x.ndim))
        rescaled = guided * cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = phi * rescaled + (1 - phi) * guided
        x = sampler.step(x, guided, t_batch, t_prev.repeat(batch))
    return x


@pytest.mark.parametrize("phi", [0.0, 0.7])
def test_batched_cfg_equals_two_passes(phi: float) -> None:
    schedule = NoiseSchedule(ScheduleConfig(prediction="v"))
    config = DDIMConfig(num_steps=8, cfg_scale=4.0, cfg_rescale=phi, final_denoise=False)
    sampler = DDIMSampler(schedule, config)
    noise = noise_like((3, 2, 4, 8, 8))
    batched = CountingDenoiser(schedule.alphas_cumprod)
    ours = sampler.sample(batched, noise)

    assert len(batched.calls) == config.num_steps  # one call per step
    expected_uncond = torch.tensor([False] * 3 + [True] * 3)
    for rows, uncond in batched.calls:
        assert rows == 6 and torch.equal(uncond, expected_uncond)

    reference = _two_pass_reference(
        sampler, CountingDenoiser(schedule.alphas_cumprod), noise, 4.0, phi
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_cfg_scale_one_runs_a_single_unguided_pass() -> None:
    schedule = NoiseSchedule(ScheduleConfig())
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=5, cfg_scale=3.0))
    denoiser = CountingDenoiser(schedule.alphas_cumprod)
    sampler.sample(denoiser, noise_like((2, 4, 8, 8)), cfg_scale=torch.ones(2))
    assert len(denoiser.calls) == 5
    assert all(rows == 2 and not uncond.any() for rows, uncond in denoiser.calls)


def test_per_view_cfg_scale_matches_scalar_runs() -> None:
    schedule = NoiseSchedule(ScheduleConfig())
    sampler = DDIMSampler(schedule, DDIMConfig(num_steps=6))
    noise = noise_like((2, 3, 4, 8, 8))  # [B, NV, C, H, W]
    denoiser = CountingDenoiser(schedule.alphas_cumprod)

    constant = sampler.sample(denoiser, noise, cfg_scale=torch.full((2, 3), 3.0))
    scalar = sampler.sample(denoiser, noise, cfg_scale=3.0)
    torch.testing.assert_close(constant, scalar, rtol=0, atol=0)

    # An azimuth-style bump: views guided differently. The fake network is elementwise, so each
    # view must equal the scalar run at that view's scale.
    per_view = torch.tensor([[1.5, 5.0, 1.5]]).expand(2, 3)
    bumped = sampler.sample(denoiser, noise, cfg_scale=per_view)
    for view, scale in enumerate((1.5, 5.0, 1.5)):
        alone = sampler.sample(denoiser, noise, cfg_scale=scale)
        torch.testing.assert_close(bumped[:, view], alone[:, view], rtol=0, atol=1e-6)


def test_cfg_scale_shape_is_validated() -> None:
    like = torch.zeros(2, 3, 4, 8, 8)
    assert expand_scale(torch.ones(1, 3), like).shape == (1, 3, 1, 1, 1)
    with pytest.raises(ValueError, match="does not broadcast"):
        expand_scale(torch.ones(3), like)  # aligned with B, not NV
    with pytest.raises(ValueError, match="enlarge"):
        expand_scale(torch.ones(1, 3), torch.zeros(2, 1, 4, 8, 8))
