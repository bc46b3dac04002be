"""Small building blocks shared by the Pippo modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN affine map; `shift`/`scale` broadcast against `x` (callers add token axes)."""
    return x * (1 + scale) + shift


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal timestep features [B] -> [B, dim]: cos half, then sin half."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> Tensor:
    """2-D sin-cos table [height * width, dim]; MAE convention: first half encodes columns."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )

    def embed_1d(pos: Tensor) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> vector: 256 sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def initialize_weights(self) -> None:
        """Small normal weights, as in DiT."""
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    def forward(self, t: Tensor) -> Tensor:
        # features are built in fp32 (t up to 1000 needs it); a bf16-cast model gets them in bf16
        features = timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(features)  # [B] -> [B, D]


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input, autocast or parameter dtype; returned in
    the input's dtype.

    A wide row's mean and variance need fp32 (bf16 keeps ~3 significant digits), and autocast
    treats layer_norm differently per device: CUDA computes in fp32 and *returns* fp32 (q, k
    would then meet a bf16 v in attention), CPU returns bf16. Computing in fp32 and casting back
    behaves the same everywhere, bf16-cast weights included. Same parameters as nn.LayerNorm,
    and identical to it in fp32.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class LayerNorm2d(FP32LayerNorm):
    """LayerNorm over the channels of a channel-first map [B, C, H, W] (in fp32)."""

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(x, "b c h w -> b h w c")
        return rearrange(super().forward(x), "b h w c -> b c h w")


class PatchEmbed(nn.Module):
    """Pixel-unshuffle -> linear (a 1x1 conv) -> LayerNorm without affine: one token per patch."""

    def __init__(self, in_channels: int, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_channels * patch * patch, dim)
        self.norm = FP32LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def initialize_weights(self) -> None:
        """Small xavier gain keeps fresh tokens close to the position embedding."""
        nn.init.xavier_uniform_(self.proj.weight, gain=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        # channel order (c p1 p2) is nn.PixelUnshuffle's
        x = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=self.patch, p2=self.patch)
        return self.norm(self.proj(x))  # [B, N, D]


class FinalLayer(nn.Module):
    """LayerNorm without affine -> linear (a 1x1 conv) -> pixel-shuffle back to a latent map."""

    def __init__(self, dim: int, patch: int, out_channels: int, grid: int) -> None:
        super().__init__()
        self.patch = patch
        self.grid = grid
        self.norm = FP32LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj = nn.Linear(dim, out_channels * patch * patch)

    def initialize_weights(self) -> None:
        """Zero weights: a fresh model predicts exactly zero (only the bias survives)."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.norm(x))
        return rearrange(
            x, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=self.grid, p1=self.patch, p2=self.patch
        )


class Sine(nn.Module):
    """sin(w0 * x)."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


class Siren(nn.Module):
    """Per-pixel sine MLP (Sitzmann et al. 2020): in -> hidden... -> out, channels last."""

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        out_features: int,
        w0_first: float = 30.0,
        w0: float = 1.0,
    ) -> None:
        super().__init__()
        widths = (in_features, *hidden, out_features)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:
                layers.append(Sine(w0_first if i == 0 else w0))
        self.net = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """U(+-sqrt(6 / fan_in)) for every linear weight, as the original release does."""
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                bound = math.sqrt(6.0 / layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """[..., in] -> [..., out], computed in fp32, returned in the input's dtype.

        sin(30 x) amplifies the first layer's rounding 30-fold: in bf16 (3 significant digits)
        the features of a pixel's ray move by 0.1 to 1, so autocast and low-precision weights
        are kept out of this tiny per-pixel MLP (a few thousand FLOPs per pixel).
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.float()
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    h = F.linear(h, layer.weight.float(), layer.bias.float())
                else:
                    h = layer(h)
        return h.to(x.dtype)


class GEGLU(nn.Module):
    """Gated GELU projection: x, gate = Linear(x).chunk(2); x * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear / Conv2d inside `module`."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
