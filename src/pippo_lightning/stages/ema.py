"""Exponential moving average of a model's weights, for validation sampling and inference."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen shadow copy of `model` pulled towards it after every optimizer step.

    The shadow is a submodule, so it lands in checkpoints next to the model, moves with
    `.to()`, and — built before any sharding — can be sharded exactly like the model (each rank
    then averages only its own shard, which needs no communication). Under DDP every rank holds
    identical weights, so every rank's shadow is identical too.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """With warm-up the early average forgets fast: min(decay, (1 + n) / (10 + n))."""
        n = int(self.num_updates)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        shadow = [p for p in self.shadow.parameters()]
        live = [p.detach() for p in model.parameters()]
        if len(shadow) != len(live):
            raise RuntimeError("EMA shadow and model have different parameter lists")
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        # The shadow only ever runs in inference mode.
        super().train(mode)
        self.shadow.eval()
        return self
