"""The spatial anchor: an oriented 3-D marker at the head, drawn into every view.

Colour code (flat colours on black, so a VAE and a network read them easily):

- white sphere at the head centre;
- red segment from the centre along the head's forward (face) direction;
- green segment along the head's up direction;
- blue segment along the subject's right (forward x up; with +y up and the face towards +z that
  is -x, the subject's own right hand).

Segments start at the centre and point one way only, so the sign of every axis is readable.
Drawing is depth-correct: each pixel shows the nearest part of the marker along its ray.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from pippo_lightning.geometry.cameras import normalize, scale_intrinsics
from pippo_lightning.geometry.plucker import camera_rays
from pippo_lightning.geometry.raycast import ray_capsule, ray_sphere

#: RGB in [0, 1] of the centre, forward, up and right parts, in drawing order.
ANCHOR_COLOURS: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0),
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
)


def head_frame(forward: Tensor, up: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal (forward, up, right) from a forward and a rough up vector, all [..., 3]."""
    forward = normalize(forward)
    up = normalize(up - (up * forward).sum(-1, keepdim=True) * forward)
    return forward, up, torch.cross(forward, up, dim=-1)


def render_spatial_anchor(
    head_center: Tensor,
    head_forward: Tensor,
    head_up: Tensor,
    intrinsics: Tensor,
    extrinsics: Tensor,
    height: int,
    width: int,
    *,
    centre_radius: float = 0.06,
    axis_length: float = 0.3,
    axis_radius: float = 0.03,
    supersample: int = 1,
) -> Tensor:
    """Anchor images [..., 3, H, W] in [0, 1] on black (colour code in the module docstring).

    head_* are world-space [3] or [..., 3], broadcast against the cameras' leading dimensions
    (e.g. [B, 1, 3] for cameras [B, NV, ...]);
    intrinsics [..., 3, 3] and extrinsics [..., 4, 4] follow :mod:`.cameras`. Sizes are in world
    units (metres in the studio). ``supersample`` > 1 averages s x s rays per pixel (anti-aliasing).
    """
    k = scale_intrinsics(intrinsics, supersample, supersample)
    origins, directions = camera_rays(k, extrinsics, height * supersample, width * supersample)
    centre = _as_ray_param(head_center, origins)
    forward, up, right = head_frame(
        _as_ray_param(head_forward, origins), _as_ray_param(head_up, origins)
    )
    distances = torch.stack(
        [
            ray_sphere(origins, directions, centre, centre_radius),
            *(
                ray_capsule(origins, directions, centre, centre + axis_length * axis, axis_radius)
                for axis in (forward, up, right)
            ),
        ],
        dim=-1,
    )  # [..., h, w, 4]
    nearest, part = distances.min(dim=-1)
    palette = torch.tensor(ANCHOR_COLOURS, dtype=origins.dtype, device=origins.device)
    colour = palette[part] * torch.isfinite(nearest).unsqueeze(-1).to(origins.dtype)
    image = rearrange(colour, "... h w c -> ... c h w")
    return box_downsample(image, supersample)


def _as_ray_param(x: Tensor, rays: Tensor) -> Tensor:
    """[..., 3] -> [..., 1, 1, 3] so a per-scene vector broadcasts over the pixel grid."""
    return torch.as_tensor(x, dtype=rays.dtype, device=rays.device)[..., None, None, :]


def box_downsample(image: Tensor, factor: int) -> Tensor:
    """Box-filter [..., C, H*f, W*f] -> [..., C, H, W]: the mean of each pixel's sub-samples."""
    if factor == 1:
        return image
    lead = image.shape[:-3]
    pooled = F.avg_pool2d(image.reshape(-1, *image.shape[-3:]), factor)
    return pooled.reshape(*lead, *pooled.shape[-3:])
