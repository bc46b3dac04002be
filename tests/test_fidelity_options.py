"""The paper's options, each a config switch, each proven through the stage or the model."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.diffusion.attention_biasing import attention_softmax_scale
from pippo_lightning.diffusion.guidance import bump_cfg_scale
from pippo_lightning.diffusion.loss import offset_noise
from pippo_lightning.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pippo_lightning.models import Pippo, PippoConfig
from pippo_lightning.stages import PostTrainStage
from pippo_lightning.stages.config import SamplingConfig

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to")

#: A model small enough for many forward passes: 4x4 latents (48 ch), 4 tokens per view.
TINY = {"dim": 32, "depth": 1, "num_heads": 2, "camera_hidden": 16}
IMAGE = 16
CONDITIONS = ("ref", "cameras", "control")


def make_stage(image_size: int = IMAGE, num_views: int = 2, **kwargs: Any) -> PostTrainStage:
    torch.manual_seed(0)
    stage = PostTrainStage(
        IdentityCompressor(space_to_depth=4),
        model_size="micro",
        model_overrides=TINY,
        image_size=image_size,
        num_views=num_views,
        **kwargs,
    )
    randomize(stage.model)
    return stage.eval()


def randomize(module: nn.Module, std: float = 0.2) -> None:
    """Noise in every parameter, so zero-initialised paths (outputs, nulls) carry signal."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def make_batch(batch: int = 2, views: int = 2, size: int = IMAGE, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def image(n: int) -> Tensor:
        return torch.rand(batch, n, 3, size, size, generator=g) * 2 - 1

    return {
        "images": image(views),
        "ref_image": image(1),
        "cam_pose": torch.randn(batch, views, 16, generator=g),
        "ref_cam_pose": torch.randn(batch, 1, 16, generator=g),
        "plucker": torch.randn(batch, views, 6, size, size, generator=g),
        "ref_plucker": torch.randn(batch, 1, 6, size, size, generator=g),
        "anchor": image(views),
        "ref_anchor": image(1),
        "azimuth_deg": torch.linspace(0, 360, views + 1)[:-1].expand(batch, views),
    }


def no_drops(batch: int) -> dict[str, Tensor]:
    return {name: torch.zeros(batch, dtype=torch.bool) for name in CONDITIONS}


class ForwardSpy:
    """Wraps `stage.model.forward`, recording the keyword arguments of every call."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[dict[str, Any]] = []
        self.forward = model.forward
        model.forward = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls.append(kwargs)
        return self.forward(*args, **kwargs)


# ---------------------------------------------------------------- parameterisation and schedules


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prediction_switch_sets_the_training_target(prediction: str) -> None:
    stage = make_stage(schedule={"prediction": prediction})
    latents = stage.to_latents(make_batch())
    t, noise = torch.tensor([30, 800]), torch.randn_like(latents.x0)
    with torch.no_grad():
        loss = stage.diffusion_loss(latents, t, noise, no_drops(2))
        output = stage.denoise(
            latents, stage.schedule.add_noise(latents.x0, noise, t), t, no_drops(2)
        )
    alpha_bar = stage.schedule.alphas_cumprod[t].reshape(2, 1, 1, 1, 1)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents.x0
    target = noise if prediction == "eps" else v
    torch.testing.assert_close(loss, ((output - target) ** 2).mean())


def test_zero_terminal_snr_switch_leaves_no_signal_at_the_last_step() -> None:
    stage = make_stage(schedule={"prediction": "v", "zero_terminal_snr": True})
    assert stage.schedule.alphas_cumprod[-1].item() == 0.0
    x0 = torch.randn(2, 2, 48, 4, 4)
    noise = torch.randn_like(x0)
    last = torch.full((2,), stage.schedule.num_timesteps - 1)
    torch.testing.assert_close(stage.schedule.add_noise(x0, noise, last), noise)
    images = stage.generate(make_batch(), SamplingConfig(num_steps=3))
    assert torch.isfinite(images).all()


def test_resolution_shift_switch_follows_the_formula() -> None:
    ratio = (512 / 256) ** 2  # the paper's r: pixel count relative to 256²
    base = NoiseSchedule(ScheduleConfig()).alphas_cumprod.double()
    stage = make_stage(schedule={"shift_ratio": ratio})
    shifted = stage.schedule.alphas_cumprod.double()
    torch.testing.assert_close(shifted, base / (ratio + (1 - ratio) * base), rtol=1e-6, atol=1e-7)
    assert torch.all(shifted[1:-1] < base[1:-1])  # more noise at every inner step


def test_noise_offset_switch_reaches_training_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    strengths: list[float] = []

    def spy(shape: Any, strength: float, *args: Any, **kwargs: Any) -> Tensor:
        strengths.append(strength)
        return offset_noise(shape, strength, *args, **kwargs)

    monkeypatch.setattr("pippo_lightning.stages.base.offset_noise", spy)
    make_stage(noise_offset=0.1).training_step(make_batch(), 0)
    assert strengths == [0.1]


def test_offset_noise_has_the_configured_per_channel_variance() -> None:
    """Spatial means of plain noise have variance 1/(HW); the offset adds strength²."""
    shape, strength = (4000, 2, 3, 8, 8), 0.3
    noise = offset_noise(shape, strength, torch.Generator().manual_seed(0))
    means = noise.mean(dim=(-2, -1))  # [B, NV, C]
    expected = 1 / 64 + strength**2
    assert means.var().item() == pytest.approx(expected, rel=0.03)
    assert noise.var().item() == pytest.approx(1 + strength**2, rel=0.01)


# ---------------------------------------------------------------- classifier-free-guidance dropout


def test_condition_dropout_rates_over_many_samples() -> None:
    p = {"ref": 0.2, "cameras": 0.1, "control": 0.3, "all": 0.05}
    stage = make_stage(condition_dropout=p)
    torch.manual_seed(0)
    n = 200_000
    drops = stage.sample_condition_drops(n)
    keep_all = 1 - p["all"]
    for name in CONDITIONS:
        # each condition drops on its own draw or with the joint one
        assert drops[name].float().mean().item() == pytest.approx(
            1 - keep_all * (1 - p[name]), abs=5e-3
        )
    together = (drops["ref"] & drops["cameras"] & drops["control"]).float().mean().item()
    independent = p["ref"] * p["cameras"] * p["control"]
    assert together == pytest.approx(p["all"] + keep_all * independent, abs=3e-3)
    pair = (drops["ref"] & drops["cameras"]).float().mean().item()
    assert pair == pytest.approx(p["all"] + keep_all * p["ref"] * p["cameras"], abs=3e-3)


@pytest.mark.parametrize("dropped", [*CONDITIONS, "all"])
def test_dropout_masks_reach_the_matching_model_inputs(dropped: str) -> None:
    stage = make_stage(
        condition_dropout={name: float(name == dropped) for name in (*CONDITIONS, "all")}
    )
    spy = ForwardSpy(stage.model)
    stage.training_step(make_batch(), 0)
    (call,) = spy.calls
    for name in CONDITIONS:
        mask = call[f"drop_{name}"]
        assert mask.dtype == torch.bool and mask.shape == (2,)
        assert bool(mask.all()) == (dropped in (name, "all")), name
        assert bool(mask.any()) == (dropped in (name, "all")), name


@pytest.mark.parametrize(
    ("condition", "null", "encoder"),
    [
        ("ref", "null.ref", "ref_encoder."),
        ("cameras", "null.cam_pose", "camera_mlp."),
        ("control", "control_mlp.null_control", "control_mlp.encoder."),
    ],
)
def test_null_embeddings_are_learned_only_from_dropped_samples(
    condition: str, null: str, encoder: str
) -> None:
    stage = make_stage()
    latents = stage.to_latents(make_batch())
    t, noise = torch.tensor([300, 600]), torch.randn_like(latents.x0)
    params = dict(stage.model.named_parameters())
    for drop in (False, True):
        stage.model.zero_grad()
        drops = no_drops(2)
        drops[condition] = torch.full((2,), drop)
        stage.diffusion_loss(latents, t, noise, drops).backward()
        null_grad = params[null].grad
        assert (null_grad is not None and null_grad.abs().sum() > 0) == drop
        if condition != "cameras":  # the reference's camera goes through the camera MLP too
            encoder_grads = [
                p.grad.abs().sum().item()
                for name, p in params.items()
                if name.startswith(encoder) and p.grad is not None
            ]
            assert (sum(encoder_grads) == 0) == drop


# ---------------------------------------------------------------- a second reference: the face crop


def face_batch(**extra: Tensor) -> dict:
    batch = make_batch()
    g = torch.Generator().manual_seed(7)
    batch["face_crop"] = torch.rand(2, 1, 3, IMAGE, IMAGE, generator=g) * 2 - 1
    return {**batch, **extra}


def test_face_crop_joins_as_a_second_reference() -> None:
    stage = make_stage(use_face_crop=True)
    batch = face_batch()
    latents = stage.to_latents(batch)
    assert latents.ref_latent.shape == (2, 2, 48, 4, 4)
    assert latents.ref_cam_pose.shape == (2, 2, 16) and latents.ref_plucker.shape[1] == 2
    assert latents.anchor_latents.shape == (2, 2 + 2, 48, 4, 4)  # targets, reference, face
    torch.testing.assert_close(latents.ref_latent[:, 1:], stage.encode_views(batch["face_crop"]))
    # without its own camera / rays / anchor the face crop reuses the reference's (as the original)
    torch.testing.assert_close(latents.ref_cam_pose[:, 1], latents.ref_cam_pose[:, 0])
    torch.testing.assert_close(latents.anchor_latents[:, -1], latents.anchor_latents[:, -2])
    own = stage.to_latents(face_batch(face_cam_pose=torch.ones(2, 1, 16)))
    assert torch.equal(own.ref_cam_pose[:, 1], torch.ones(2, 16))
    assert stage.train_tokens == (2 + 2) * stage.model_config.tokens_per_view


def test_face_crop_changes_the_prediction_and_drops_with_the_reference() -> None:
    stage = make_stage(use_face_crop=True)
    t = torch.tensor([200, 700])
    x_t = torch.randn(2, 2, 48, 4, 4, generator=torch.Generator().manual_seed(2))
    other_face = face_batch()
    other_face["face_crop"] = -other_face["face_crop"]
    with torch.no_grad():
        plain, changed = (
            stage.denoise(stage.to_latents(b), x_t, t, no_drops(2))
            for b in (face_batch(), other_face)
        )
        dropped = no_drops(2) | {"ref": torch.ones(2, dtype=torch.bool)}
        a, b = (
            stage.denoise(stage.to_latents(b), x_t, t, dropped) for b in (face_batch(), other_face)
        )
    assert (plain - changed).abs().max() > 1e-3
    # under reference dropout both references become the null and the face no longer matters
    # (its controls are the reference's anchor and rays with x_t = 0, none of them from it)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_face_crop_is_required_when_switched_on_and_ignored_when_off() -> None:
    with pytest.raises(ValueError, match="face_crop"):
        make_stage(use_face_crop=True).to_latents(make_batch())
    assert make_stage().to_latents(face_batch()).ref_latent.shape[1] == 1


def test_model_treats_references_as_a_set() -> None:
    """R >= 1 references join the sequence without an order: swapping them changes nothing."""
    config = PippoConfig(latent_size=4, **TINY)
    model = Pippo(config).eval()
    randomize(model)
    g = torch.Generator().manual_seed(5)
    c, s = config.latent_channels, config.latent_size
    refs = torch.randn(2, 2, c, s, s, generator=g)
    ref_cams = torch.randn(2, 2, 16, generator=g)
    ref_rays = torch.randn(2, 2, 6, 8, 8, generator=g)
    anchors = torch.randn(2, 3 + 2, c, s, s, generator=g)
    common = {
        "x_t": torch.randn(2, 3, c, s, s, generator=g),
        "t": torch.tensor([1, 999]),
        "cam_pose": torch.randn(2, 3, 16, generator=g),
        "plucker": torch.randn(2, 3, 6, 8, 8, generator=g),
    }
    swap = [1, 0]
    with torch.no_grad():
        first = model(
            **common,
            ref_latent=refs,
            ref_cam_pose=ref_cams,
            ref_plucker=ref_rays,
            anchor_latents=anchors,
        )
        second = model(
            **common,
            ref_latent=refs[:, swap],
            ref_cam_pose=ref_cams[:, swap],
            ref_plucker=ref_rays[:, swap],
            anchor_latents=torch.cat([anchors[:, :3], anchors[:, 3:][:, swap]], dim=1),
        )
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- attention biasing and bump CFG


@pytest.mark.parametrize("image_size", [16, 32])
@pytest.mark.parametrize("num_views", [2, 6])
def test_attention_biasing_takes_n_train_from_num_views_not_image_size(
    image_size: int, num_views: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gamma, sampled_views = 1.5, 4
    stage = make_stage(image_size=image_size, num_views=num_views)
    tokens = stage.model_config.tokens_per_view
    assert stage.train_tokens == (num_views + 1) * tokens  # whatever the resolution

    scales: list[float | None] = []
    denoise = stage.denoise

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        scales.append(args[4] if len(args) > 4 else kwargs.get("attention_scale"))
        return denoise(*args, **kwargs)

    monkeypatch.setattr(stage, "denoise", spy)
    batch = make_batch(views=sampled_views, size=image_size)
    stage.generate(batch, SamplingConfig(num_steps=2, attention_gamma=gamma))
    expected = attention_softmax_scale(
        gamma, (sampled_views + 1) * tokens, (num_views + 1) * tokens, stage.model_config.head_dim
    )
    assert scales == [pytest.approx(expected)] * 2
    stage.generate(batch, SamplingConfig(num_steps=1))
    assert scales[-1] is None  # no gamma: the plain 1/sqrt(d) softmax


def test_bump_cfg_rises_to_90_stays_flat_to_270_and_falls_back() -> None:
    floor, peak = 1.5, 5.0
    azimuth = torch.arange(0.0, 361.0, 1.0)
    scale = bump_cfg_scale(azimuth, peak, floor)
    rise, flat, fall = scale[:91], scale[90:271], scale[270:]
    assert (
        scale[0] == floor and scale[360] == floor and scale[45] == pytest.approx((floor + peak) / 2)
    )
    assert torch.all(rise[1:] > rise[:-1]) and torch.all(fall[1:] < fall[:-1])
    assert torch.all(flat == peak)
    torch.testing.assert_close(scale, scale.flip(0))  # symmetric about the back view
    torch.testing.assert_close(
        bump_cfg_scale(torch.tensor([-45.0, 405.0]), peak, floor), scale[[315, 45]]
    )


def test_bump_schedule_gives_per_view_scales_from_azimuth() -> None:
    stage = make_stage()
    batch = make_batch(views=4)  # azimuths 0, 90, 180, 270
    sampling = SamplingConfig(num_steps=2, cfg_scale=4.0, cfg_schedule="bump", cfg_floor=1.0)
    scales = stage.guidance_scale(sampling, batch)
    torch.testing.assert_close(scales, torch.tensor([[1.0, 4.0, 4.0, 4.0]]).expand(2, 4))
    assert stage.guidance_scale(SamplingConfig(cfg_scale=4.0), batch) == 4.0
    assert math.isfinite(stage.generate(batch, sampling).abs().max().item())
