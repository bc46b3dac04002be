"""Turning batches of views into pictures: uint8 conversion and labelled-free grids."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from pippo_lightning.checkpoints.atomic import atomic_path


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] → [..., H, W, 3] uint8."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).numpy()


def view_grid(rows: list[list[Tensor]], pad: int = 2) -> np.ndarray:
    """Lay out rows of view stacks ([V_i, 3, H, W] each) side by side → one [H', W', 3] image.

    Every row must hold the same total number of views; a white gap separates the stacks of
    one row so "reference | generated | ground truth" reads at a glance.
    """
    row_images = []
    for stacks in rows:
        parts = []
        for stack in stacks:
            parts.append(rearrange(to_uint8(stack), "v h w c -> h (v w) c"))
            parts.append(np.full((parts[-1].shape[0], pad, 3), 255, dtype=np.uint8))
        row_images.append(np.concatenate(parts[:-1], axis=1))
    width = max(r.shape[1] for r in row_images)
    padded = [
        np.pad(r, ((0, pad), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        for r in row_images
    ]
    return np.concatenate(padded, axis=0)[:-pad]


def write_image_atomic(path: Path, image: np.ndarray) -> Path:
    """Write a PNG through a temporary file so a reader never sees half an image."""
    with atomic_path(path) as temporary:
        iio.imwrite(temporary, image, extension=".png")
    return path


def generated_outputs(is_global_zero: bool, outputs: object) -> dict[str, Tensor] | None:
    """A validation step's outputs when they carry generated views [B, NV, 3, H, W] and this is
    rank 0 (media are written once), else None."""
    if not is_global_zero or not isinstance(outputs, dict):
        return None
    generated = outputs.get("generated")
    if not isinstance(generated, Tensor) or generated.ndim != 5:
        return None
    return outputs
