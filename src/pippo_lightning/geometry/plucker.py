"""Per-pixel camera rays and their Plücker coordinates (conventions in :mod:`.cameras`)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from pippo_lightning.geometry.cameras import camera_centers, normalize


def pixel_centers(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Homogeneous pixel centres [H, W, 3] = (j + 0.5, i + 0.5, 1)."""
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def camera_rays(
    intrinsics: Tensor, extrinsics: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre.

    intrinsics [..., 3, 3], extrinsics [..., 4, 4] -> origins [..., H, W, 3] (the camera centre)
    and unit directions [..., H, W, 3].
    """
    pixels = pixel_centers(height, width, intrinsics.dtype, intrinsics.device)
    inverse_k = torch.linalg.inv(intrinsics)
    directions_cam = torch.einsum("...ij,hwj->...hwi", inverse_k, pixels)
    # Camera->world rotation is R^T, hence the transposed index pattern.
    rotation = extrinsics[..., :3, :3]
    directions = normalize(torch.einsum("...ji,...hwj->...hwi", rotation, directions_cam))
    origins = camera_centers(extrinsics)[..., None, None, :].expand_as(directions)
    return origins, directions


def plucker_rays(intrinsics: Tensor, extrinsics: Tensor, height: int, width: int) -> Tensor:
    """Plücker coordinates [..., 6, H, W] of the ray through each pixel centre.

    Channels 0-2: unit direction d (world); channels 3-5: moment m = o x d with o the camera
    centre. (d, m) identifies the ray independently of where along it o sits, and m . d = 0.
    """
    origins, directions = camera_rays(intrinsics, extrinsics, height, width)
    moments = torch.cross(origins, directions, dim=-1)
    rays = torch.cat([directions, moments], dim=-1)
    return rearrange(rays, "... h w c -> ... c h w")
