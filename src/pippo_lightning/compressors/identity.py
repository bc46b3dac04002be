"""Pixel-space "compressor": no learnt weights, optionally folding pixels into channels."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from pippo_lightning.compressors.base import IMAGE_CHANNELS, Compressor


class IdentityCompressor(Compressor):
    """Diffusion directly on pixels.

    ``space_to_depth`` f > 1 folds each f×f block into channels (pixel-unshuffle): images
    [N, 3, H, W] become [N, 3·f², H/f, W/f] losslessly, which gives a latent-sized grid for cheap
    CPU demos and tests without a VAE. ``decode`` inverts ``encode`` exactly.
    """

    @classmethod
    def latent_geometry(cls, space_to_depth: int = 1, **settings: Any) -> tuple[int, int]:
        return space_to_depth, IMAGE_CHANNELS * space_to_depth**2

    def __init__(self, space_to_depth: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(chunk_size=chunk_size)
        if space_to_depth < 1:
            raise ValueError(f"space_to_depth={space_to_depth}: must be >= 1")
        self.downsample_factor, self.latent_channels = self.latent_geometry(space_to_depth)
        self.freeze()

    def _encode(self, images: Tensor) -> Tensor:
        if self.downsample_factor == 1:
            return images
        return F.pixel_unshuffle(images, self.downsample_factor)  # [N, 3·f², H/f, W/f]

    def _decode(self, latents: Tensor) -> Tensor:
        if self.downsample_factor == 1:
            return latents
        return F.pixel_shuffle(latents, self.downsample_factor)  # [N, 3, h·f, w·f]

    def identity_key(self) -> str:
        return f"identity-s2d{self.downsample_factor}"

    def extra_repr(self) -> str:
        return f"space_to_depth={self.downsample_factor}"
