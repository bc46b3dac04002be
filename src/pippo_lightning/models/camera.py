"""Camera MLP: a flattened camera (16 numbers) -> one embedding added to every token of its view."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pippo_lightning.models.layers import GEGLU, FP32LayerNorm


class CameraMLP(nn.Module):
    """LayerNorm -> Linear + learnable token -> one pre-LN GEGLU block (no skip) -> dim."""

    def __init__(self, in_features: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.in_norm = FP32LayerNorm(in_features)
        self.in_proj = nn.Linear(in_features, hidden)
        self.token = nn.Parameter(torch.zeros(hidden))
        self.norm = FP32LayerNorm(hidden)
        self.geglu = GEGLU(hidden, hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Zero output layer: a new camera MLP adds nothing to a pre-trained generator's tokens."""
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, cameras: Tensor) -> Tensor:
        """cameras [..., in_features] -> embeddings [..., dim]."""
        h = self.in_proj(self.in_norm(cameras)) + self.token
        return self.out_proj(self.geglu(self.norm(h)))
