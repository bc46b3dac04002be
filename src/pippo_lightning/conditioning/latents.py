"""The conditions of one batch in latent space: what the denoiser reads besides the noisy views."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class LatentBatch:
    """A batch after compression: everything the denoiser reads, in latent space."""

    x0: Tensor  # [B, NV, C, h, w] clean target latents
    ref_latent: Tensor  # [B, R, C, h, w]: the reference (+ face crop)
    cam_pose: Tensor | None  # [B, NV, 16]
    ref_cam_pose: Tensor | None  # [B, R, 16]
    plucker: Tensor | None  # [B, NV, 6, H, W]
    ref_plucker: Tensor | None  # [B, R, 6, H, W]
    anchor_latents: Tensor | None  # [B, NV + R, C, h, w], targets then reference(s)
    global_embedding: Tensor | None = None  # [B, E] from the frozen image encoder

    @property
    def batch_size(self) -> int:
        return self.x0.shape[0]

    def repeat(self, times: int) -> LatentBatch:
        """The same conditions stacked `times` over the batch axis (for batched guidance)."""
        if times == 1:
            return self

        def stack(value: Tensor | None) -> Tensor | None:
            return None if value is None else torch.cat([value] * times, dim=0)

        return LatentBatch(
            **{f.name: stack(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )
