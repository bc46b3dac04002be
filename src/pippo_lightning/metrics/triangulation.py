"""Two-view triangulation and projection with known pinhole cameras, batched over matches.

Cameras are OpenCV-style 3x4 projection matrices ``P = K [R | t]`` mapping homogeneous world
points to homogeneous pixels; pixel coordinates follow whatever convention ``K`` was built in
(this package: the centre of pixel (row i, column j) is at (j + 0.5, i + 0.5)).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Below this magnitude a homogeneous coordinate is treated as zero (a point at infinity, or a
# point on a camera's principal plane); dividing by it would give inf/nan.
_EPS = 1e-12


def projection_matrix(intrinsics: Tensor, extrinsics: Tensor) -> Tensor:
    """``K @ [R | t]`` [..., 3, 4] from K [..., 3, 3] and world->camera [..., 3 or 4, 4]."""
    return intrinsics @ extrinsics[..., :3, :4]


def camera_centers(extrinsics: Tensor) -> Tensor:
    """World positions [..., 3] of cameras with world->camera extrinsics [..., 3 or 4, 4].

    The centre C solves ``R C + t = 0``; the translation column t alone is not a position.
    """
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    return -torch.einsum("...ji,...j->...i", rotation, translation)  # -R^T t


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with |denominator| kept above ``_EPS`` (sign preserved)."""
    sign = torch.where(denominator < 0, -1.0, 1.0).to(denominator)
    return numerator / (sign * denominator.abs().clamp_min(_EPS))


def project_homogeneous(projection: Tensor, points_h: Tensor) -> Tensor:
    """Pixels [N, 2] of homogeneous world points [N, 4] under cameras P [N, 3, 4].

    Works for points at infinity too, which is why the metric reprojects homogeneous points.
    """
    pixels_h = torch.einsum("nij,nj->ni", projection, points_h)  # [N, 3]
    return _safe_divide(pixels_h[:, :2], pixels_h[:, 2:])


def project(projection: Tensor, points: Tensor) -> Tensor:
    """Pixels [N, 2] of world points X [N, 3] under cameras P [N, 3, 4]."""
    ones = torch.ones_like(points[:, :1])
    return project_homogeneous(projection, torch.cat([points, ones], dim=-1))


def _centers_from_projection(projection: Tensor) -> Tensor:
    """Camera centres [N, 3] of P [N, 3, 4]: the null vector of P, i.e. ``-M^-1 p4``."""
    return -torch.linalg.solve(projection[:, :, :3], projection[:, :, 3:]).squeeze(-1)


def _world_normalization(projection_1: Tensor, projection_2: Tensor) -> Tensor:
    """Similarity U [N, 4, 4] taking a per-match normalised frame to the world.

    The normalised frame has its origin midway between the two camera centres and the baseline
    as its unit of length. Both are defined by the cameras alone, so solving in this frame makes
    the DLT independent of the world's origin, orientation and units.
    """
    center_1 = _centers_from_projection(projection_1)  # [N, 3]
    center_2 = _centers_from_projection(projection_2)
    scale = (center_1 - center_2).norm(dim=-1).clamp_min(_EPS)  # [N]
    transform = torch.zeros(*scale.shape, 4, 4, dtype=scale.dtype, device=scale.device)
    transform[:, [0, 1, 2], [0, 1, 2]] = scale[:, None]
    transform[:, :3, 3] = 0.5 * (center_1 + center_2)
    transform[:, 3, 3] = 1.0
    return transform


def _depth_normalized(projection: Tensor) -> Tensor:
    """P [N, 3, 4] rescaled so its third row maps a point to its depth along the optical axis.

    P is defined up to scale, and the DLT residual of a view is (third row . X) x pixel error, so
    this fixes each view's weight to depth x pixel error, whatever scale the caller's P had.
    For P = K [R | t] with K[2, 2] = 1 it is a no-op.
    """
    return projection / projection[:, 2:3, :3].norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _dlt_rows(projection: Tensor, pixels: Tensor) -> Tensor:
    """The two DLT equations [N, 2, 4] of one view: ``x P3 - P1`` and ``y P3 - P2``."""
    return pixels[:, :, None] * projection[:, 2:3, :] - projection[:, :2, :]


def triangulate_dlt_homogeneous(
    projection_1: Tensor,
    projection_2: Tensor,
    pixels_1: Tensor,
    pixels_2: Tensor,
    normalize: bool = True,
) -> Tensor:
    """Homogeneous world points [N, 4] (unit norm) seen at pixels_1/2 [N, 2] by P1/P2 [N, 3, 4].

    Linear (DLT) triangulation: the right singular vector of the smallest singular value of the
    4x4 system, computed in float64 and returned in the input dtype.

    ``normalize`` conditions the system (Hartley & Zisserman, sec. 4.4 and 12.2):
    - world side: the unknowns live in a frame centred between the two cameras with the
      baseline as unit length, so the result no longer depends on where the world origin is or
      which units it uses (mm vs m);
    - image side: each P is scaled to unit-norm third row (see ``_depth_normalized``). For a
      single point, Hartley's pixel normalisation (translate + isotropic scale) reduces to
      scaling each view's two equations, so that per-view weight is the only image-side choice.
    Exact matches give the same point either way. With ``normalize=False`` this is the plain
    DLT of ``cv2.triangulatePoints``, equal to it on noisy matches too.
    """
    dtype = torch.promote_types(projection_1.dtype, pixels_1.dtype)
    p1, p2 = projection_1.double(), projection_2.double()
    x1, x2 = pixels_1.double(), pixels_2.double()
    if normalize:
        p1, p2 = _depth_normalized(p1), _depth_normalized(p2)
        to_world = _world_normalization(p1, p2)  # [N, 4, 4]
    else:
        to_world = torch.eye(4, dtype=p1.dtype, device=p1.device).expand(len(p1), 4, 4)

    system = torch.cat([_dlt_rows(p1, x1), _dlt_rows(p2, x2)], dim=1) @ to_world  # [N, 4, 4]
    _, _, vh = torch.linalg.svd(system)
    points_h = torch.einsum("nij,nj->ni", to_world, vh[:, -1, :])  # [N, 4]
    points_h = points_h / points_h.norm(dim=-1, keepdim=True)
    return points_h.to(dtype)


def triangulate_dlt(
    projection_1: Tensor,
    projection_2: Tensor,
    pixels_1: Tensor,
    pixels_2: Tensor,
    normalize: bool = True,
) -> Tensor:
    """World points X [N, 3] seen at pixels_1/2 [N, 2] by cameras P1/P2 [N, 3, 4] (DLT).

    See :func:`triangulate_dlt_homogeneous` for the conditioning that ``normalize`` applies.
    """
    points_h = triangulate_dlt_homogeneous(
        projection_1, projection_2, pixels_1, pixels_2, normalize=normalize
    )
    return _safe_divide(points_h[:, :3], points_h[:, 3:])
