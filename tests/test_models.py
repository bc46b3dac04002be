"""Behaviour of the pure-torch Pippo model: zero-init, CFG drop masks, shapes, sizes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pippo_lightning.diffusion.attention_biasing import attention_softmax_scale
from pippo_lightning.models import (
    MODEL_SIZES,
    Pippo,
    PippoConfig,
    count_parameters,
    pippo_config,
)
from pippo_lightning.models.layers import timestep_embedding

SMALL = PippoConfig(latent_size=8, dim=32, depth=2, num_heads=4, camera_hidden=16)


def make_inputs(config: PippoConfig, batch: int = 2, views: int = 2, pixel_scale: int = 2) -> dict:
    """Random inputs for `Pippo.forward`: latents at latent size, Plücker maps at pixel size."""
    g = torch.Generator().manual_seed(0)
    c, s, px = config.latent_channels, config.latent_size, config.latent_size * pixel_scale
    return {
        "x_t": torch.randn(batch, views, c, s, s, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "ref_latent": torch.randn(batch, 1, c, s, s, generator=g),
        "cam_pose": torch.randn(batch, views, config.camera_features, generator=g),
        "ref_cam_pose": torch.randn(batch, 1, config.camera_features, generator=g),
        "plucker": torch.randn(batch, views, 6, px, px, generator=g),
        "ref_plucker": torch.randn(batch, 1, 6, px, px, generator=g),
        "anchor_latents": torch.randn(batch, views + 1, c, s, s, generator=g),
    }


def randomize(module: nn.Module | None, seed: int = 1, std: float = 0.2) -> None:
    """Replace every parameter by noise so that zero-initialised paths carry signal."""
    if module is None:
        return
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def run(model: Pippo, inputs: dict, **kwargs) -> Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs)


@pytest.mark.parametrize("views", [1, 2, 3])
def test_output_shape_matches_target_views(views: int) -> None:
    model = Pippo(SMALL).eval()
    inputs = make_inputs(SMALL, batch=2, views=views)
    assert run(model, inputs).shape == inputs["x_t"].shape


def test_fresh_model_predicts_zero() -> None:
    model = Pippo(SMALL).eval()
    assert torch.count_nonzero(run(model, make_inputs(SMALL))) == 0


def test_fresh_control_mlp_has_no_effect() -> None:
    torch.manual_seed(0)
    model = Pippo(SMALL).eval()
    for part in (model.generator, model.ref_encoder, model.camera_mlp, model.null):
        randomize(part)
    inputs = make_inputs(SMALL)
    with_control = run(model, inputs)
    assert with_control.abs().max() > 0

    dropped = run(model, inputs, drop_control=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(with_control, dropped, rtol=0, atol=1e-6)

    without = Pippo(PippoConfig(**{**SMALL.__dict__, "use_control": False})).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("control_mlp.")}
    without.load_state_dict(state, strict=True)
    torch.testing.assert_close(with_control, run(without, inputs), rtol=0, atol=1e-6)


def test_fresh_camera_mlp_outputs_zeros() -> None:
    model = Pippo(SMALL)
    cams = torch.randn(3, 5, SMALL.camera_features)
    assert torch.count_nonzero(model.camera_mlp(cams)) == 0


@pytest.mark.parametrize("drop", ["drop_ref", "drop_cameras", "drop_control"])
def test_drop_mask_acts_per_sample(drop: str) -> None:
    model = Pippo(SMALL).eval()
    randomize(model)
    inputs = make_inputs(SMALL)
    plain = run(model, inputs)
    mixed = run(model, inputs, **{drop: torch.tensor([True, False])})
    torch.testing.assert_close(mixed[1], plain[1], rtol=0, atol=1e-5)
    assert (mixed[0] - plain[0]).abs().max() > 1e-3


def test_drop_all_false_equals_no_mask() -> None:
    model = Pippo(SMALL).eval()
    randomize(model)
    inputs = make_inputs(SMALL)
    keep = torch.zeros(2, dtype=torch.bool)
    masked = run(model, inputs, drop_ref=keep, drop_cameras=keep, drop_control=keep)
    torch.testing.assert_close(masked, run(model, inputs), rtol=0, atol=1e-6)


def test_default_attention_scale_is_inverse_sqrt_head_dim() -> None:
    model = Pippo(SMALL).eval()
    randomize(model)
    inputs = make_inputs(SMALL)
    explicit = run(model, inputs, attention_scale=1 / math.sqrt(SMALL.head_dim))
    torch.testing.assert_close(run(model, inputs), explicit, rtol=0, atol=1e-5)
    assert (run(model, inputs, attention_scale=0.05) - explicit).abs().max() > 1e-4


def test_plucker_at_latent_resolution_is_accepted() -> None:
    model = Pippo(SMALL).eval()
    inputs = make_inputs(SMALL, pixel_scale=1)
    assert run(model, inputs).shape == inputs["x_t"].shape


def test_model_without_cameras_or_control_ignores_those_inputs() -> None:
    config = PippoConfig(**{**SMALL.__dict__, "use_cameras": False, "use_control": False})
    model = Pippo(config).eval()
    assert model.camera_mlp is None and model.control_mlp is None and model.null.cam_pose is None
    randomize(model)
    inputs = make_inputs(config)
    bare = {k: inputs[k] for k in ("x_t", "t", "ref_latent")}
    torch.testing.assert_close(run(model, bare), run(model, inputs), rtol=0, atol=0)


def test_control_without_xt_builds_smaller_encoder() -> None:
    config = PippoConfig(**{**SMALL.__dict__, "control_xt": False})
    model = Pippo(config).eval()
    assert model.control_mlp.encoder.conv_in.in_channels == 4 + 32
    assert run(model, make_inputs(config)).shape == (2, 2, 4, 8, 8)


@pytest.mark.parametrize(
    ("argument", "bad"),
    [
        ("x_t", torch.zeros(2, 2, 3, 8, 8)),
        ("x_t", torch.zeros(2, 4, 8, 8)),
        ("t", torch.zeros(3, dtype=torch.long)),
        ("ref_latent", torch.zeros(2, 1, 4, 8, 6)),
        ("cam_pose", torch.zeros(2, 3, 16)),
        ("ref_cam_pose", torch.zeros(2, 1, 12)),
        ("plucker", torch.zeros(2, 2, 3, 16, 16)),
        ("plucker", torch.zeros(2, 2, 6, 12, 12)),
        ("ref_plucker", torch.zeros(2, 1, 6, 8, 8)),
        ("anchor_latents", torch.zeros(2, 2, 4, 8, 8)),
        ("drop_ref", torch.zeros(2)),
        ("drop_control", torch.zeros(3, dtype=torch.bool)),
    ],
)
def test_bad_shapes_raise_value_error_naming_argument(argument: str, bad: Tensor) -> None:
    model = Pippo(SMALL).eval()
    inputs = {**make_inputs(SMALL), argument: bad}
    with pytest.raises(ValueError, match=argument) as info:
        run(model, inputs)
    assert "expected" in str(info.value) and str(tuple(bad.shape)) in str(info.value)


@pytest.mark.parametrize("argument", ["cam_pose", "plucker", "anchor_latents"])
def test_missing_required_condition_raises(argument: str) -> None:
    model = Pippo(SMALL).eval()
    inputs = {**make_inputs(SMALL), argument: None}
    with pytest.raises(ValueError, match=f"{argument} is required"):
        run(model, inputs)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dim": 30, "num_heads": 4}, "dim"),
        ({"latent_size": 9}, "latent_size"),
        ({"depth": 0}, "depth"),
        ({"plucker_siren_layers": ()}, "plucker_siren_layers"),
        ({"patch_size": 4}, "patch_size"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PippoConfig(**overrides)


def test_unknown_size_lists_valid_sizes() -> None:
    with pytest.raises(ValueError, match="micro.*tiny"):
        pippo_config("huge")
    assert pippo_config("tiny", depth=3).depth == 3
    assert set(MODEL_SIZES) == {"micro", "tiny", "full"}


@pytest.mark.parametrize(
    ("size", "generator", "control"),
    [("tiny", 128.4e6, 34.1e6), ("full", 1192.7e6, 248.8e6)],
)
def test_parameter_counts_match_paper(size: str, generator: float, control: float) -> None:
    with torch.device("meta"):
        model = Pippo(pippo_config(size, latent_size=16))
    counts = count_parameters(model)
    assert counts["generator"] == pytest.approx(generator, rel=0.01)
    assert counts["control_mlp"] == pytest.approx(control, rel=0.01)
    parts = sum(v for k, v in counts.items() if k != "total")
    assert parts == counts["total"]


def test_attention_softmax_scale_formula() -> None:
    scale = attention_softmax_scale(1.5, 4000, 1536, 64)
    assert scale == pytest.approx(math.sqrt(1.5 * math.log(4000) / math.log(1536) / 64))
    assert attention_softmax_scale(1.0, 1000, 1000, 64) == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="num_tokens"):
        attention_softmax_scale(1.5, 1, 1536, 64)


def test_timestep_embedding_is_cos_then_sin() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.cos(7 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.sin(7 * freqs))
