"""The three stages share one base; each starts from the previous one and first predicts what
it predicted (new modules at zero output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.models.image_encoders import DINOv2Encoder, EncoderLoadError, ThumbnailEncoder
from pippo_lightning.stages import MidTrainStage, PostTrainStage, PreTrainStage
from pippo_lightning.stages.config import ConfigError

SIZE = 16  # image px; identity compressor with 2x2 space-to-depth -> 8x8 latents


def build(cls: type, **kwargs: object):
    return cls(
        compressor=IdentityCompressor(space_to_depth=2),
        model_size="micro",
        image_size=SIZE,
        ema={"enabled": False},
        **kwargs,
    ).eval()


def perturb(module: nn.Module, seed: int) -> None:
    """Give every weight (zero-initialised ones too) a random value, so equality means something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def save_stage(stage, path: Path) -> Path:
    torch.save({"state_dict": stage.state_dict()}, path)
    return path


def inputs(views: int = 1, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x_t": torch.randn(batch, views, 12, 8, 8, generator=g),
        "t": torch.tensor([10, 700][:batch]),
        "ref_latent": torch.randn(batch, 1, 12, 8, 8, generator=g),
        "cam_pose": torch.randn(batch, views, 16, generator=g),
        "ref_cam_pose": torch.randn(batch, 1, 16, generator=g),
        "plucker": torch.randn(batch, views, 6, SIZE, SIZE, generator=g),
        "ref_plucker": torch.randn(batch, 1, 6, SIZE, SIZE, generator=g),
        "anchor_latents": torch.randn(batch, views + 1, 12, 8, 8, generator=g),
        "global_embedding": torch.randn(batch, 3 * 4 * 4, generator=g),
    }


def test_m2_initialised_from_p1_predicts_exactly_what_p1_predicts(tmp_path: Path) -> None:
    p1 = build(PreTrainStage, num_views=1, image_encoder=ThumbnailEncoder(size=4))
    perturb(p1.model, seed=1)
    m2 = build(
        MidTrainStage,
        num_views=4,
        image_encoder=ThumbnailEncoder(size=4),
        init_from=str(save_stage(p1, tmp_path / "p1.ckpt")),
    )
    x = inputs(views=1)
    with torch.no_grad():
        expected = p1.model(x["x_t"], x["t"], global_embedding=x["global_embedding"])
        # same single view and embedding; its camera goes through the fresh (zero) camera MLP
        actual = m2.model(
            x["x_t"], x["t"], cam_pose=x["cam_pose"], global_embedding=x["global_embedding"]
        )
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_p3_initialised_from_m2_predicts_exactly_what_m2_predicts(tmp_path: Path) -> None:
    m2 = build(MidTrainStage, num_views=2)
    perturb(m2.model, seed=2)
    p3 = build(PostTrainStage, num_views=2, init_from=str(save_stage(m2, tmp_path / "m2.ckpt")))
    x = inputs(views=2)
    shared = {k: x[k] for k in ("ref_latent", "cam_pose", "ref_cam_pose")}
    with torch.no_grad():
        expected = m2.model(x["x_t"], x["t"], **shared)
        actual = p3.model(
            x["x_t"],
            x["t"],
            **shared,
            plucker=x["plucker"],
            ref_plucker=x["ref_plucker"],
            anchor_latents=x["anchor_latents"],
        )
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_init_from_prefers_the_ema_weights_and_restarts_the_ema(tmp_path: Path) -> None:
    m2 = MidTrainStage(
        compressor=IdentityCompressor(space_to_depth=2), image_size=SIZE, num_views=2
    )
    perturb(m2.ema.shadow, seed=3)  # EMA differs from the raw weights
    p3 = PostTrainStage(
        compressor=IdentityCompressor(space_to_depth=2),
        image_size=SIZE,
        num_views=2,
        init_from=str(save_stage(m2, tmp_path / "m2.ckpt")),
    )
    for name, value in m2.ema.shadow.state_dict().items():
        torch.testing.assert_close(p3.model.state_dict()[name], value)
        torch.testing.assert_close(p3.ema.shadow.state_dict()[name], value)


def test_init_from_a_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path: Path) -> None:
    p3 = build(PostTrainStage, num_views=2)
    path = save_stage(p3, tmp_path / "p3.ckpt")
    with pytest.raises(ConfigError, match=r"weights the stage lacks \(\d+\): .*control_mlp"):
        build(MidTrainStage, num_views=2, init_from=str(path))
    # the backbone must come whole, from Python as from the CLI's preflight
    state = {k: v for k, v in p3.state_dict().items() if ".blocks.0." not in k}
    torch.save({"state_dict": state}, tmp_path / "no_block0.ckpt")
    with pytest.raises(ConfigError, match=r"missing from the checkpoint \(\d+\): .*blocks\.0\."):
        build(PostTrainStage, num_views=2, init_from=str(tmp_path / "no_block0.ckpt"))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        build(MidTrainStage, num_views=2, init_from=str(tmp_path / "missing.ckpt"))


def test_p1_trains_one_step_on_single_views() -> None:
    # no CFG dropout: with the default 0.2 both samples' embeddings are dropped in 4 % of
    # (global-RNG dependent) draws, and then no gradient reaches the embedding either
    p1 = build(
        PreTrainStage,
        num_views=1,
        image_encoder=ThumbnailEncoder(size=4),
        condition_dropout={"ref": 0.0},
    ).train()
    perturb(p1.model, seed=4)  # fresh adaLN is zero: no gradient would reach the embedding
    batch = {"images": torch.rand(2, 1, 3, SIZE, SIZE) * 2 - 1, "index": torch.arange(2)}
    loss = p1.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert p1.model.global_embedding.proj.weight.grad.abs().sum() > 0
    assert p1.model.ref_encoder is None and p1.model.camera_mlp is None


def test_p1_refuses_views_and_a_missing_encoder() -> None:
    with pytest.raises(ConfigError, match="image_encoder"):
        build(PreTrainStage, num_views=1)
    with pytest.raises(ConfigError, match="num_views must be 1"):
        build(PreTrainStage, num_views=4, image_encoder=ThumbnailEncoder())


def test_frozen_image_encoder_stays_out_of_checkpoints() -> None:
    p1 = build(PreTrainStage, num_views=1, image_encoder=ThumbnailEncoder(size=4))
    assert not any(k.startswith("image_encoder.") for k in p1.state_dict())


def test_dinov2_encoder_loads_a_local_model_through_transformers(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=28,
    )
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    encoder = DINOv2Encoder(str(tmp_path / "dinov2"), image_size=28)
    embedding = encoder(torch.rand(3, 3, 40, 40) * 2 - 1)
    assert embedding.shape == (3, 32) and encoder.embedding_dim == 32
    assert not any(p.requires_grad for p in encoder.parameters())
    stage = build(PreTrainStage, num_views=1, image_encoder=encoder)
    assert stage.model_config.global_embedding_dim == 32


def test_dinov2_encoder_missing_weights_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match="no-such-dir"):
        DINOv2Encoder(str(tmp_path / "no-such-dir"))
    with pytest.raises(EncoderLoadError, match="allow_download"):
        DINOv2Encoder("someone/not-cached-dinov2")
