"""First stages: a tiny real AutoencoderKL saved to disk, loading errors, pixel space."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from pippo_lightning.compressors import (
    CompressorLoadError,
    IdentityCompressor,
    SDXLVAECompressor,
)

BLOCKS = (8, 16)  # two blocks: one 2x downsampling


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(BLOCKS),
        block_out_channels=BLOCKS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_vae")
    tiny_autoencoder().save_pretrained(path)
    return path


def images(*leading: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*leading, 3, size, size, generator=generator) * 2 - 1


def test_sdxl_vae_loads_local_dir_and_derives_its_geometry(vae_dir: Path) -> None:
    compressor = SDXLVAECompressor(str(vae_dir))
    assert compressor.downsample_factor == 2 ** (len(BLOCKS) - 1)
    assert compressor.latent_channels == 4
    latents = compressor.encode(images(2))
    assert latents.shape == (2, 4, 8, 8)
    assert compressor.decode(latents).shape == (2, 3, 16, 16)
    # Leading dims ([B, NV, ...]) pass through.
    views = compressor.encode(images(2, 3))
    assert views.shape == (2, 3, 4, 8, 8)
    decoded = compressor.decode(views)
    assert decoded.shape == (2, 3, 3, 16, 16)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_sdxl_vae_scales_the_posterior_mean(vae_dir: Path) -> None:
    compressor = SDXLVAECompressor(str(vae_dir), chunk_size=None)
    x = images(2)
    mean = compressor.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(compressor.encode(x), mean * 0.13025)
    from_config = SDXLVAECompressor(str(vae_dir), scale_factor=None)
    assert from_config.scale_factor == compressor.vae.config.scaling_factor
    torch.manual_seed(0)
    sampled = SDXLVAECompressor(str(vae_dir), sample_posterior=True).encode(x)
    assert not torch.allclose(sampled, compressor.encode(x))


def test_chunked_encode_and_decode_equal_unchunked(vae_dir: Path) -> None:
    whole = SDXLVAECompressor(str(vae_dir), chunk_size=None)
    chunked = SDXLVAECompressor(str(vae_dir), chunk_size=2)
    x = images(5)
    latents = whole.encode(x)
    torch.testing.assert_close(chunked.encode(x), latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.decode(latents), whole.decode(latents), rtol=0, atol=1e-5)


def test_sdxl_vae_is_frozen_and_stays_out_of_checkpoints(vae_dir: Path) -> None:
    host = torch.nn.Module()
    host.head = torch.nn.Linear(2, 2)
    host.compressor = SDXLVAECompressor(str(vae_dir))
    host.train()
    assert not host.compressor.training and not host.compressor.vae.training
    assert not any(p.requires_grad for p in host.compressor.parameters())
    assert not host.compressor.encode(images(1)).requires_grad

    state = host.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    before = host.compressor.vae.encoder.conv_in.weight.clone()
    host.load_state_dict(state, strict=True)  # weights the checkpoint lacks are kept
    assert torch.equal(host.compressor.vae.encoder.conv_in.weight, before)
    assert len(host.compressor.full_state_dict()) == len(host.compressor.vae.state_dict())


def test_identity_key_names_the_weights_not_the_path(vae_dir: Path, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    tiny_autoencoder(seed=1).save_pretrained(other_dir)
    copy_dir = tmp_path / "copy"
    tiny_autoencoder(seed=0).save_pretrained(copy_dir)
    key = SDXLVAECompressor(str(vae_dir)).identity_key()
    assert key == SDXLVAECompressor(str(vae_dir)).identity_key()
    assert key == SDXLVAECompressor(str(copy_dir)).identity_key()
    assert key != SDXLVAECompressor(str(other_dir)).identity_key()
    assert key != SDXLVAECompressor(str(vae_dir), sample_posterior=True).identity_key()


def test_sdxl_vae_runs_in_a_chosen_dtype(vae_dir: Path) -> None:
    compressor = SDXLVAECompressor(str(vae_dir), dtype="bf16")
    assert compressor.dtype == torch.bfloat16
    latents = compressor.encode(images(1))
    assert latents.dtype == torch.float32  # callers keep their own dtype
    assert compressor.decode(latents).dtype == torch.float32


def test_missing_local_path_raises_load_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "vae"
    with pytest.raises(CompressorLoadError, match="compressor.pretrained") as info:
        SDXLVAECompressor(str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_directory_without_a_vae_raises_load_error(tmp_path: Path) -> None:
    with pytest.raises(CompressorLoadError, match=str(tmp_path)):
        SDXLVAECompressor(str(tmp_path))


def test_uncached_hub_id_offline_raises_load_error_without_network(tmp_path: Path) -> None:
    # A fresh interpreter, because huggingface_hub reads HF_HOME / HF_HUB_OFFLINE at import.
    # Any socket connect would fail the run loudly instead of hanging on a missing network.
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        from pippo_lightning.compressors import CompressorLoadError, SDXLVAECompressor

        try:
            SDXLVAECompressor("stabilityai/sdxl-vae")
        except CompressorLoadError as err:
            print("LOAD_ERROR:", err)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "LOAD_ERROR:" in result.stdout
    assert "stabilityai/sdxl-vae" in result.stdout
    assert "allow_download" in result.stdout
    assert "network access attempted" not in result.stdout + result.stderr


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_identity_compressor_round_trips_exactly(factor: int) -> None:
    compressor = IdentityCompressor(space_to_depth=factor, chunk_size=3)
    x = images(2, 4)  # [B, NV, 3, 16, 16]
    latents = compressor.encode(x)
    assert latents.shape == (2, 4, 3 * factor**2, 16 // factor, 16 // factor)
    assert compressor.latent_channels == 3 * factor**2 and compressor.downsample_factor == factor
    assert torch.equal(compressor.decode(latents), x)
    assert compressor.identity_key() == f"identity-s2d{factor}"


def test_compressor_rejects_bad_shapes() -> None:
    compressor = IdentityCompressor(space_to_depth=4)
    with pytest.raises(ValueError, match="3, H, W"):
        compressor.encode(torch.zeros(2, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        compressor.encode(torch.zeros(2, 3, 18, 16))
    with pytest.raises(ValueError, match="48"):
        compressor.decode(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="space_to_depth"):
        IdentityCompressor(space_to_depth=0)
