"""Multi-view diffusion transformer: parallel adaLN blocks over one token sequence per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pippo_lightning.models.layers import (
    FinalLayer,
    FP32LayerNorm,
    PatchEmbed,
    TimestepEmbedder,
    modulate,
    sincos_pos_embed_2d,
    xavier_init_linears,
)


class DiTBlock(nn.Module):
    """Parallel block: attention and MLP read one normed input; both branches are adaLN-gated."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        mlp_hidden = int(dim * mlp_ratio)
        self.split_sizes = [mlp_hidden, dim, dim, dim]

        # every norm runs in fp32 (see FP32LayerNorm): the guard rail for bf16 autocast
        self.norm = FP32LayerNorm(dim)
        self.in_proj = nn.Linear(dim, mlp_hidden + 3 * dim)  # fused [mlp hidden, q, k, v]
        self.q_norm = FP32LayerNorm(self.head_dim)
        self.k_norm = FP32LayerNorm(self.head_dim)
        self.attn_out = nn.Linear(dim, dim)
        self.mlp_act = nn.GELU()
        self.mlp_out = nn.Linear(mlp_hidden, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        control: Tensor | None = None,
        attention_scale: float | None = None,
    ) -> Tensor:
        """x [B, L, D] (all views of a sample in one sequence); c [B, D]; control [B, L, D]."""
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = rearrange(
            self.adaLN_modulation(c), "b (k d) -> k b 1 d", k=6
        )
        mlp, q, k, v = self.in_proj(self.norm(x)).split(self.split_sizes, dim=-1)

        q = self.q_norm(rearrange(q, "b l (h e) -> b l h e", h=self.num_heads))
        k = self.k_norm(rearrange(k, "b l (h e) -> b l h e", h=self.num_heads))
        q, k, v = (
            rearrange(q, "b l h e -> b h l e"),
            rearrange(k, "b l h e -> b h l e"),
            rearrange(v, "b l (h e) -> b h l e", h=self.num_heads),
        )
        # q, k are normalised in fp32 and come back in v's dtype (bf16 under autocast), so the
        # fused kernels run; those keep the softmax's max, exp-sum and accumulation in fp32.
        attn = F.scaled_dot_product_attention(q, k, v, scale=attention_scale)
        attn = self.attn_out(rearrange(attn, "b h l e -> b l (h e)"))
        attn = gate_attn * modulate(attn, shift_attn, scale_attn)

        mlp = self.mlp_out(self.mlp_act(mlp))
        if control is not None:
            # ControlMLP enters here (before modulation): the place the original found to work
            mlp = mlp + control
        mlp = gate_mlp * modulate(mlp, shift_mlp, scale_mlp)
        return x + attn + mlp


class DiT(nn.Module):
    """Pippo's generator: patchify each view, run DiT blocks over all views jointly, unpatchify."""

    def __init__(
        self,
        in_channels: int,
        latent_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid = latent_size // patch_size
        self.patch_embed = PatchEmbed(in_channels, patch_size, dim)
        # one table for the grid of a single view, shared by every view of the sequence
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(dim, patch_size, in_channels, self.grid)
        self.activation_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT recipe; adaLN and the output layer start at zero so a fresh block is the identity."""
        xavier_init_linears(self)
        self.pos_embed.data.copy_(
            sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid, self.grid)
        )
        self.patch_embed.initialize_weights()
        self.t_embedder.initialize_weights()
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        self.final_layer.initialize_weights()

    def embed_views(self, x: Tensor) -> Tensor:
        """Latents [B, V, C, h, w] -> tokens [B, V, N, D] with the position embedding added."""
        tokens = self.patch_embed(rearrange(x, "b v c h w -> (b v) c h w")) + self.pos_embed
        return rearrange(tokens, "(b v) n d -> b v n d", b=x.shape[0])

    def unembed_views(self, tokens: Tensor) -> Tensor:
        """Tokens [B, V, N, D] -> latents [B, V, C, h, w]."""
        x = self.final_layer(rearrange(tokens, "b v n d -> (b v) n d"))
        return rearrange(x, "(b v) c h w -> b v c h w", b=tokens.shape[0])

    def forward(
        self,
        tokens: Tensor,
        t: Tensor,
        controls: list[Tensor] | None = None,
        attention_scale: float | None = None,
        condition: Tensor | None = None,
    ) -> Tensor:
        """tokens [B, V, N, D], t [B], controls: one [B, V, N, D] per block -> [B, V, N, D].

        condition [B, D], if given, joins the timestep embedding that drives every adaLN
        (P1's global image embedding).
        """
        num_views = tokens.shape[1]
        x = rearrange(tokens, "b v n d -> b (v n) d")
        c = self.t_embedder(t)
        if condition is not None:
            c = c + condition.to(c.dtype)
        for i, block in enumerate(self.blocks):
            control = None if controls is None else rearrange(controls[i], "b v n d -> b (v n) d")
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # recompute the block in backward: activations of one block instead of all
                x = checkpoint(block, x, c, control, attention_scale, use_reentrant=False)
            else:
                x = block(x, c, control=control, attention_scale=attention_scale)
        return rearrange(x, "b (v n) d -> b v n d", v=num_views)
