"""Pieces the benchmark scripts share: a random-weight SDXL VAE, synthetic batches, our step.

`make bench-original` (scripts/bench_original.py) and `make bench-scale`
(pippo_lightning.cli.bench_scale) time the training step that Lightning runs for a stage, from
synthetic tensors of the real shapes, one configuration per process so peak memory is its own.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pippo_lightning.stages.precision import autocast_for, resolve_precision

#: stabilityai/sdxl-vae's architecture (diffusers AutoencoderKL config); weights are random
SDXL_VAE_ARCHITECTURE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}
SDXL_DOWNSAMPLE = 8


def time_steps(step: Callable[[], Any], warmup: int, steps: int) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def save_random_sdxl_vae(directory: Path, seed: int = 0) -> None:
    """The SDXL VAE architecture with seeded random weights, saved for from_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**SDXL_VAE_ARCHITECTURE).save_pretrained(directory)


def stage_batch(num_views: int, image_size: int, cached: bool, seed: int = 0) -> dict[str, Any]:
    """A P3 batch of one subject: images, cameras, Plücker rays, and either the latents a latent
    cache delivers (`cached`) or the reference and anchor images the VAE would encode."""
    g = torch.Generator().manual_seed(seed)
    latent = image_size // SDXL_DOWNSAMPLE

    def image(views: int) -> torch.Tensor:
        return torch.rand(1, views, 3, image_size, image_size, generator=g) * 2 - 1

    batch: dict[str, Any] = {
        "images": image(num_views),  # [1, NV, 3, H, W]
        "cam_pose": torch.randn(1, num_views, 16, generator=g),
        "ref_cam_pose": torch.randn(1, 1, 16, generator=g),
        "plucker": torch.randn(1, num_views, 6, image_size, image_size, generator=g),
        "ref_plucker": torch.randn(1, 1, 6, image_size, image_size, generator=g),
    }
    if cached:
        batch["latents"] = torch.randn(1, num_views, 4, latent, latent, generator=g)
        batch["ref_latent"] = torch.randn(1, 1, 4, latent, latent, generator=g)
        batch["anchor_latents"] = torch.randn(1, num_views + 1, 4, latent, latent, generator=g)
    else:
        batch.update(ref_image=image(1), anchor=image(num_views), ref_anchor=image(1))
    return batch


def build_stage(
    vae_dir: Path, model_size: str, image_size: int, num_views: int, ema: bool = True
) -> Any:
    """The P3 stage with the VAE saved in `vae_dir` and freshly initialised weights."""
    from pippo_lightning.compressors import SDXLVAECompressor
    from pippo_lightning.stages import PostTrainStage

    torch.manual_seed(0)
    stage = PostTrainStage(
        SDXLVAECompressor(pretrained=str(vae_dir)),
        model_size=model_size,
        image_size=image_size,
        num_views=num_views,
        ema={"enabled": ema},
    )
    stage.log = lambda *args, **kwargs: None  # no trainer attached
    return stage


def stage_train_step(
    vae_dir: Path,
    model_size: str,
    image_size: int,
    num_views: int,
    cached: bool = True,
    precision: str = "auto",
    ema: bool = True,
    device: str = "cpu",
) -> tuple[Callable[[], None], str, Any]:
    """(step, resolved precision, stage): one call of `step` is what Lightning runs per training
    step — training_step under the precision's autocast, backward, gradient clipping, the
    optimizer step, zero_grad(set_to_none) and the EMA update."""
    stage = build_stage(vae_dir, model_size, image_size, num_views, ema)
    # as on_fit_start does when the datamodule reads a latent cache
    stage.release_unused_compressor_parts(latents_cached=cached)
    target = torch.device(device)
    stage.to(target)
    optimizer = stage.configure_optimizers()["optimizer"]
    batch = to_device(stage_batch(num_views, image_size, cached), target)
    resolved = resolve_precision(precision, "gpu" if target.type == "cuda" else "cpu")
    stage.train()

    def step() -> None:
        with autocast_for(target, resolved):
            loss = stage.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if stage.ema is not None:
            stage.ema.update(stage.model)

    return step, resolved, stage


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
