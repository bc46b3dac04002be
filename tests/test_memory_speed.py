"""Issue #14: what training from a latent cache frees, and the optimizer's fused step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from pippo_lightning.compressors import IdentityCompressor, SDXLVAECompressor
from pippo_lightning.stages import PostTrainStage


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).save_pretrained(path)
    return path


def stage(compressor, **kwargs) -> PostTrainStage:
    return PostTrainStage(compressor, model_size="micro", image_size=16, num_views=2, **kwargs)


def test_training_from_a_latent_cache_frees_the_vae_encoder_but_not_the_decoder(
    vae_dir: Path,
) -> None:
    trained = stage(SDXLVAECompressor(pretrained=str(vae_dir)))
    compressor = trained.compressor
    identity = compressor.identity_key()
    before = sum(p.numel() for p in compressor.parameters())
    trained.release_unused_compressor_parts(latents_cached=True)
    after = sum(p.numel() for p in compressor.parameters())
    assert after < before
    assert compressor.vae.encoder is None and compressor.vae.decoder is not None
    # a cache written by this VAE still matches it
    assert compressor.identity_key() == identity
    decoded = compressor.decode(torch.randn(1, 4, 8, 8))  # validation sampling still decodes
    assert decoded.shape == (1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="encoder was released"):
        compressor.encode(torch.zeros(1, 3, 16, 16))
    # the model's checkpoint does not hold the VAE, so it is unchanged by the release
    assert not any(key.startswith("compressor.") for key in trained.state_dict())


def test_encoding_runs_keep_the_encoder(vae_dir: Path) -> None:
    trained = stage(SDXLVAECompressor(pretrained=str(vae_dir)))
    trained.release_unused_compressor_parts(latents_cached=False)
    assert trained.compressor.vae.encoder is not None
    face = stage(SDXLVAECompressor(pretrained=str(vae_dir)), use_face_crop=True)
    face.release_unused_compressor_parts(latents_cached=True)  # face crops are encoded per step
    assert face.compressor.vae.encoder is not None


def test_adamw_is_fused_on_cpu_and_steps_like_the_for_loop() -> None:
    torch.manual_seed(0)
    trained = stage(IdentityCompressor())
    optimizer = trained.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    params = [p for p in trained.model.parameters() if p.requires_grad]
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    # the group's lr: the warm-up scheduler has already scaled it
    group = optimizer.param_groups[0]
    settings = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}
    loop = torch.optim.AdamW(reference, **settings, fused=False, foreach=False)
    for p, q in zip(params, reference, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    optimizer.step()
    loop.step()
    for p, q in zip(params, reference, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_gradients_are_clipped_under_lightning_precision(precision: str) -> None:
    import lightning as L

    trained = stage(IdentityCompressor())
    trainer = L.Trainer(accelerator="cpu", precision=precision, gradient_clip_val=1.0, logger=False)
    trained.trainer = trainer
    optimizer = trained.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    params = [p for p in trained.model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    # Lightning's AMP plugin raises here for a fused optimizer unless the stage clips itself
    trained.configure_gradient_clipping(optimizer, 1.0, "norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm <= 1.0 + 1e-4
