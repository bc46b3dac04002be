"""ControlMLP: pixel-aligned controls (anchor, Plücker rays, x_t) -> one tensor per DiT block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pippo_lightning.models.layers import LayerNorm2d, Siren, TimestepEmbedder, modulate


class ControlEncoder(nn.Module):
    """Control map [B, C_in, h, w] -> tokens [B, N, D], one per 2x2 patch; no width bottleneck."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.conv_down = nn.Conv2d(dim, 2 * dim, 3, padding=1, stride=2)
        self.conv_out = nn.Conv2d(2 * dim, dim, 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv_in(x))
        x = self.act(self.conv_down(x))
        x = self.norm(self.conv_out(x))
        return rearrange(x, "b d h w -> b (h w) d")


class ControlBlock(nn.Module):
    """Per-DiT-block head: timestep adaLN (shift, scale) then a linear, both zero at init."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h [B, V, N, D], c [B, D] -> control [B, V, N, D]."""
        shift, scale = rearrange(self.adaLN_modulation(c), "b (k d) -> k b 1 1 d", k=2)
        return self.proj(modulate(h, shift, scale))


class ControlMLP(nn.Module):
    """Light ControlNet: encode [anchor, Plücker-SIREN, x_t] per view once; one head per block.

    use_anchor / use_plucker / use_xt choose the inputs (the paper's ablations): a left-out input
    has no channels and no weights here at all, rather than a channel fed zeros that training
    could still read a bias from; its argument to :meth:`forward` is ignored (it may be None).
    The anchor or x_t must stay: they carry the latent grid size the controls are made at.
    """

    def __init__(
        self,
        latent_channels: int,
        dim: int,
        depth: int,
        plucker_siren_layers: tuple[int, ...] = (16, 32),
        plucker_features: int = 32,
        use_xt: bool = True,
        use_anchor: bool = True,
        use_plucker: bool = True,
    ) -> None:
        super().__init__()
        if not (use_anchor or use_xt):
            raise ValueError(
                "ControlMLP needs the anchor or x_t among its inputs (use_anchor or use_xt)"
            )
        self.use_xt, self.use_anchor, self.use_plucker = use_xt, use_anchor, use_plucker
        in_channels = (
            (latent_channels if use_anchor else 0)
            + (plucker_features if use_plucker else 0)
            + (latent_channels if use_xt else 0)
        )
        self.plucker_siren = (
            Siren(6, plucker_siren_layers, plucker_features) if use_plucker else None
        )
        self.encoder = ControlEncoder(in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList(ControlBlock(dim) for _ in range(depth))
        # stand-in output for samples whose controls are dropped (classifier-free guidance)
        self.null_control = nn.Parameter(torch.zeros(1, 1, dim))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier convs; zero adaLN and output linears: a new ControlMLP leaves the DiT as is."""
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for layer in (block.adaLN_modulation[-1], block.proj):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def encode_plucker(self, plucker: Tensor, size: tuple[int, int]) -> Tensor:
        """Plücker rays [B', 6, H, W] (pixel size) -> SIREN features [B', F, h, w] (latent size)."""
        features = self.plucker_siren(rearrange(plucker, "b c h w -> b h w c"))
        features = rearrange(features, "b h w c -> b c h w")
        # SIREN per pixel first, then a plain bilinear resize (no antialias): as the original
        return F.interpolate(
            features, size=size, mode="bilinear", align_corners=True, antialias=False
        )

    def forward(
        self,
        anchors: Tensor | None,
        plucker: Tensor | None,
        t: Tensor,
        x_t: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> list[Tensor]:
        """Controls for every block, each [B, V, N, D].

        anchors [B, V, C, h, w]; plucker [B, V, 6, H, W]; t [B]; x_t [B, V, C, h, w];
        drop: bool [B], True = that sample gets the learned null control. An input the module
        was built without is not read.
        """
        used = {
            name: value
            for name, value, flag in (
                ("anchors", anchors, self.use_anchor),
                ("plucker", plucker, self.use_plucker),
                ("x_t", x_t, self.use_xt),
            )
            if flag
        }
        for name, value in used.items():
            if value is None:
                raise ValueError(f"ControlMLP was built to read {name}, but {name} is None")
        grid = used["anchors"] if self.use_anchor else used["x_t"]  # [B, V, C, h, w]
        batch, views = grid.shape[:2]
        inputs = []
        if self.use_anchor:
            inputs.append(rearrange(anchors, "b v c h w -> (b v) c h w"))
        if self.use_plucker:
            rays = rearrange(plucker, "b v c h w -> (b v) c h w")
            inputs.append(self.encode_plucker(rays, size=tuple(grid.shape[-2:])))
        if self.use_xt:
            inputs.append(rearrange(x_t, "b v c h w -> (b v) c h w"))
        h = self.encoder(torch.cat(inputs, dim=1))
        h = rearrange(h, "(b v) n d -> b v n d", b=batch, v=views)
        c = self.t_embedder(t)
        controls = [block(h, c) for block in self.blocks]
        if drop is not None:
            keep = ~drop[:, None, None, None]
            controls = [torch.where(keep, out, self.null_control.to(out.dtype)) for out in controls]
        return controls
