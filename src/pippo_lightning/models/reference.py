"""Reference encoder: the input photo's latent -> tokens that join the views' self-attention."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from pippo_lightning.models.layers import PatchEmbed, sincos_pos_embed_2d


class ReferenceEncoder(nn.Module):
    """Own patchify + learnable 2-D sin-cos position embedding for reference latents."""

    def __init__(self, in_channels: int, latent_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.grid = latent_size // patch_size
        self.patch_embed = PatchEmbed(in_channels, patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Sin-cos start for the position table; small patch projection like the generator's."""
        self.pos_embed.data.copy_(
            sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid, self.grid)
        )
        self.patch_embed.initialize_weights()

    def forward(self, latents: Tensor) -> Tensor:
        """latents [B, R, C, h, w] -> tokens [B, R, N, D]."""
        tokens = self.patch_embed(rearrange(latents, "b r c h w -> (b r) c h w")) + self.pos_embed
        return rearrange(tokens, "(b r) n d -> b r n d", b=latents.shape[0])
