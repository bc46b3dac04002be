"""Classifier-free guidance: combine conditional and unconditional network outputs.

Kept apart from the sampler (the "guider" of sgm) so a per-view or per-step scale schedule can be
swapped in without touching the DDIM update.
"""

from __future__ import annotations

import torch
from torch import Tensor

GuidanceScale = float | Tensor


def expand_scale(scale: GuidanceScale, like: Tensor) -> GuidanceScale:
    """Shape a guidance scale so it broadcasts against a batch ``like`` [B, ...].

    A float stays a float. A tensor is aligned with ``like``'s *leading* dims, e.g. per-view scales
    [B, NV] against latents [B, NV, C, H, W] become [B, NV, 1, 1, 1]; a scale may broadcast over
    those dims ([1, NV]) but never grow them.
    """
    if not isinstance(scale, Tensor):
        return float(scale)
    if scale.ndim > like.ndim:
        raise ValueError(
            f"cfg_scale has shape {tuple(scale.shape)}: more dims than the batch {tuple(like.shape)}"
        )
    leading = like.shape[: scale.ndim]
    try:
        broadcast = torch.broadcast_shapes(scale.shape, leading)
    except RuntimeError as err:
        raise ValueError(
            f"cfg_scale of shape {tuple(scale.shape)} does not broadcast to the batch's leading "
            f"dims {tuple(leading)}"
        ) from err
    if broadcast != leading:
        raise ValueError(
            f"cfg_scale of shape {tuple(scale.shape)} would enlarge the batch's leading dims "
            f"{tuple(leading)}"
        )
    trailing = [1] * (like.ndim - scale.ndim)
    return scale.to(like.device, like.dtype).reshape(*scale.shape, *trailing)


def guidance_enabled(scale: GuidanceScale) -> bool:
    """False when every scale is exactly 1, i.e. guided output == conditional output."""
    if isinstance(scale, Tensor):
        return bool((scale != 1).any())
    return scale != 1.0


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """CFG-rescale (Lin et al. 2024, eq. 14-16): pull the guided output's std back to cond's.

    Large scales inflate the output's magnitude and over-saturate images; matching the std of
    the conditional output per sample, then mixing by ``phi``, undoes that. Std is taken over
    every dim but the first, so all views of one sample share one correction.
    """
    if phi == 0.0:
        return guided
    dims = list(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)  # [B, 1, ...]
    return phi * ratio * guided + (1.0 - phi) * guided


def classifier_free_guidance(
    cond: Tensor, uncond: Tensor, scale: GuidanceScale, rescale: float = 0.0
) -> Tensor:
    """uncond + s (cond - uncond), optionally CFG-rescaled; all tensors [B, ...].

    Applied to raw network outputs: eps and v are affine in each other with the same x_t, so the
    linear combination means the same in either space (the rescale step is where they differ,
    and like the original release we rescale in the network's own output space).
    """
    guided = uncond + expand_scale(scale, cond) * (cond - uncond)
    return rescale_guided(guided, cond, rescale)


def bump_cfg_scale(
    azimuth_deg: Tensor, peak: float, floor: float = 1.0, ramp_deg: float = 90.0
) -> Tensor:
    """Per-view guidance that follows the azimuth from the reference ("bump" schedule).

    Views near the reference copy it and need little guidance; views around the back must
    invent the most. The scale rises linearly from `floor` at the reference (0°) to `peak` at
    `ramp_deg`, stays at `peak` until 360° - `ramp_deg`, and falls back to `floor`.
    azimuth_deg: [..., NV] in degrees (any range; taken modulo 360) → scales [..., NV].
    """
    if not 0.0 < ramp_deg <= 180.0:
        raise ValueError(f"ramp_deg must be in (0, 180], got {ramp_deg}")
    azimuth = torch.remainder(azimuth_deg.float(), 360.0)
    distance = torch.minimum(azimuth, 360.0 - azimuth)  # angular distance to the reference
    ramp = (distance / ramp_deg).clamp(max=1.0)
    return floor + (peak - floor) * ramp
