"""The denoising objective: MSE between the network output and the schedule's target."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def offset_noise(
    shape: Sequence[int],
    strength: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Gaussian noise plus a per-image, per-channel constant scaled by ``strength``.

    Plain white noise barely touches an image's mean colour, so a model trained on it cannot make
    very dark or bright images; the shared offset teaches it to (Guttenberg 2023). The offset is
    constant over the last two (spatial) dims, so [B, C, H, W] and [B, NV, C, H, W] both work.
    With strength 0 no offset is drawn, so the generator yields exactly ``torch.randn(shape)``.
    """
    shape = tuple(shape)
    if len(shape) < 3:
        raise ValueError(f"offset_noise needs a shape [..., C, H, W]; got {shape}")
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    if strength != 0.0:
        offset = torch.randn(
            (*shape[:-2], 1, 1), generator=generator, device=draw_device, dtype=dtype
        )
        noise = noise + strength * offset
    return noise.to(device) if device is not None else noise


class DiffusionLoss(nn.Module):
    """Mean squared error, computed in fp32 whatever the prediction's dtype.

    ``weight`` [B]: per-sample weights (e.g. min-SNR), averaged over the batch unnormalised.
    ``mask``: broadcastable to the prediction (e.g. [B, NV, 1, 1, 1] for padded views); each
    sample's error is averaged over its unmasked elements only, so masking views does not shrink
    the loss.
    """

    def per_sample(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean squared error of each sample, float32 [B]."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        squared = (prediction.float() - target.float()) ** 2  # [B, ...]
        dims = list(range(1, squared.ndim))
        if mask is None:
            return squared.mean(dim=dims)
        mask = mask.to(squared.dtype).expand_as(squared)
        # A fully masked sample contributes 0 rather than 0 / 0.
        return (squared * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=torch.finfo().eps)

    def forward(
        self,
        prediction: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss: batch mean of (optionally weighted) per-sample MSE."""
        losses = self.per_sample(prediction, target, mask)  # [B]
        if weight is not None:
            if weight.numel() != losses.numel():
                raise ValueError(
                    f"weight has {weight.numel()} values for a batch of {losses.numel()} samples"
                )
            losses = losses * weight.to(losses.device, losses.dtype).reshape(-1)
        return losses.mean()
