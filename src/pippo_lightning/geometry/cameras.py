"""Pinhole cameras in the OpenCV convention, batched over any leading dimensions.

Conventions shared by the whole package:

- camera frame: x right, y down, z forward (the viewing direction);
- extrinsics ``E`` [4, 4] map world to camera: ``x_cam = E @ [x_world, 1]``;
- intrinsics ``K`` [3, 3] are in pixels of the stored image. The centre of pixel (row i, column j)
  sits at continuous coordinates (u, v) = (j + 0.5, i + 0.5), so the image spans [0, W] x [0, H]
  and resizing it by (sx, sy) is exactly ``diag(sx, sy, 1) @ K`` (see :func:`scale_intrinsics`);
- the synthetic studio's world is metric (metres) with +y up (:data:`WORLD_UP`), the floor at
  y = 0, subjects facing +z; azimuths turn counter-clockwise seen from above (right-hand rule
  about +y), with azimuth 0 on the +z axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor

#: The studio's up axis; azimuths are measured around it.
WORLD_UP: tuple[float, float, float] = (0.0, 1.0, 0.0)

Vector = Tensor | Sequence[float]


def _vec(x: Vector, like: Tensor | None = None) -> Tensor:
    """A float tensor from a tensor or a sequence, on the device/dtype of ``like`` when given."""
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    tensor = torch.as_tensor(x)
    return tensor if tensor.is_floating_point() else tensor.float()


def normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit vectors along the last dimension."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def make_extrinsics(rotation: Tensor, translation: Tensor) -> Tensor:
    """[..., 4, 4] world->camera matrix from R [..., 3, 3] and t [..., 3]."""
    top = torch.cat([rotation, translation.unsqueeze(-1)], dim=-1)  # [..., 3, 4]
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def to_homogeneous_extrinsics(extrinsics: Tensor) -> Tensor:
    """Accept world->camera as [..., 3, 4] or [..., 4, 4]; return [..., 4, 4]."""
    if extrinsics.shape[-2:] == (4, 4):
        return extrinsics
    if extrinsics.shape[-2:] != (3, 4):
        raise ValueError(
            f"extrinsics must be [..., 3, 4] or [..., 4, 4], got {list(extrinsics.shape)}"
        )
    return make_extrinsics(extrinsics[..., :3, :3], extrinsics[..., :3, 3])


def look_at(eye: Vector, target: Vector, up: Vector = WORLD_UP) -> Tensor:
    """World->camera [..., 4, 4] of a camera at ``eye`` looking at ``target``.

    Image "down" (+y of the camera) follows ``-up``, so ``up`` appears at the top of the image.
    """
    eye = _vec(eye)
    target, up = _vec(target, eye), _vec(up, eye)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    forward = normalize(target - eye)
    right = torch.cross(forward, up, dim=-1)
    if bool((right.norm(dim=-1) < 1e-8).any()):
        raise ValueError(
            "look_at: the viewing direction is parallel to `up`; pick another up vector"
        )
    right = normalize(right)
    down = torch.cross(forward, right, dim=-1)
    # Rows of R are the camera axes expressed in world coordinates.
    rotation = torch.stack([right, down, forward], dim=-2)
    translation = -torch.einsum("...ij,...j->...i", rotation, eye)
    return make_extrinsics(rotation, translation)


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> Tensor:
    """[3, 3] intrinsics with square pixels, ``fov_deg`` the *vertical* field of view.

    The principal point is the image centre (W/2, H/2) under the pixel-centre-at-+0.5 convention.
    """
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]],
        dtype=torch.float32,
    )


def dome_cameras(
    rings: Sequence[tuple[float, int]],
    radius: float,
    target: Vector,
    fov_deg: float,
    width: int,
    height: int,
    stagger: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cameras on rings of a dome around ``target`` in the studio world (+y up, azimuth 0 on +z).

    Each ring is (elevation_deg, count): ``count`` cameras evenly spread in azimuth at that height,
    all looking at ``target``. With ``stagger`` ring r is rotated by r/len(rings) of its spacing so
    the rings interleave and cover more distinct azimuths (3 rings of 8 -> every 15 degrees).

    Returns K [N, 3, 3], E [N, 4, 4], azimuth_deg [N] in [0, 360), elevation_deg [N].
    """
    azimuths, elevations = [], []
    for ring_index, (elevation, count) in enumerate(rings):
        if count < 1:
            raise ValueError(f"dome ring {ring_index} has {count} cameras; need at least 1")
        offset = 360.0 / count * ring_index / len(rings) if stagger else 0.0
        for k in range(count):
            azimuths.append((offset + 360.0 * k / count) % 360.0)
            elevations.append(float(elevation))
    azimuth = torch.tensor(azimuths, dtype=torch.float32)
    elevation = torch.tensor(elevations, dtype=torch.float32)
    centre = _vec(target, azimuth)
    eye = centre + radius * spherical_direction(azimuth, elevation)
    extrinsics = look_at(eye, centre.expand_as(eye), _vec(WORLD_UP, eye).expand_as(eye))
    intrinsics = intrinsics_from_fov(fov_deg, width, height).expand(len(azimuths), 3, 3).clone()
    return intrinsics, extrinsics, azimuth, elevation


def spherical_direction(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """Unit vectors [..., 3] of the studio world (+y up, azimuth 0 on +z, counter-clockwise)."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)


def camera_centers(extrinsics: Tensor) -> Tensor:
    """Camera centres [..., 3] in world coordinates: c = -R^T t."""
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    return -torch.einsum("...ji,...j->...i", rotation, translation)


def camera_forward(extrinsics: Tensor) -> Tensor:
    """Viewing directions [..., 3] in world coordinates (third row of R)."""
    return extrinsics[..., 2, :3]


def world_to_camera(points: Tensor, extrinsics: Tensor) -> Tensor:
    """Points [..., P, 3] in camera coordinates [..., P, 3]."""
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    return torch.einsum("...ij,...pj->...pi", rotation, points) + translation.unsqueeze(-2)


def project_points(points: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points [..., P, 3] to pixels.

    Returns uv [..., P, 2] (continuous; pixel (i, j) covers [j, j+1) x [i, i+1)) and depth
    [..., P] along the optical axis. Points with depth <= 0 are behind the camera; their uv is
    meaningless, so callers should mask them with ``depth > 0``.
    """
    camera = world_to_camera(points, extrinsics)
    depth = camera[..., 2]
    pixels = torch.einsum("...ij,...pj->...pi", intrinsics, camera)
    return pixels[..., :2] / pixels[..., 2:3], depth


def scale_intrinsics(intrinsics: Tensor, sx: float, sy: float) -> Tensor:
    """Intrinsics after resizing the image by (sx, sy) = (W'/W, H'/H).

    Exact (no half-pixel shift) because pixel centres sit at +0.5: the image edges map to edges.
    """
    scale = torch.tensor([sx, sy, 1.0], dtype=intrinsics.dtype, device=intrinsics.device)
    return intrinsics * scale.unsqueeze(-1)


def crop_intrinsics(intrinsics: Tensor, left: float, top: float) -> Tensor:
    """Intrinsics after cropping the image at column ``left`` and row ``top``."""
    shifted = intrinsics.clone()
    shifted[..., 0, 2] -= left
    shifted[..., 1, 2] -= top
    return shifted


def camera_pose_vector(intrinsics: Tensor, extrinsics: Tensor, width: int, height: int) -> Tensor:
    """The 16 numbers fed to the camera MLP, [..., 16].

    Layout: the 12 entries of E[:3, :4] (world->camera) row-major, then fx/W, fy/H, cx/W, cy/H.
    Dividing the intrinsics by the image size makes the vector resolution-independent: resizing an
    image (and its intrinsics with :func:`scale_intrinsics`) leaves it unchanged.
    """
    rows = rearrange(extrinsics[..., :3, :4], "... r c -> ... (r c)")
    normalized = torch.stack(
        [
            intrinsics[..., 0, 0] / width,
            intrinsics[..., 1, 1] / height,
            intrinsics[..., 0, 2] / width,
            intrinsics[..., 1, 2] / height,
        ],
        dim=-1,
    )
    return torch.cat([rows, normalized], dim=-1)


def camera_from_pose_vector(pose: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`camera_pose_vector`: K [..., 3, 3] and E [..., 4, 4] for a W x H image."""
    top = rearrange(pose[..., :12], "... (r c) -> ... r c", r=3, c=4)
    extrinsics = make_extrinsics(top[..., :3], top[..., 3])
    fx, fy = pose[..., 12] * width, pose[..., 13] * height
    cx, cy = pose[..., 14] * width, pose[..., 15] * height
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    intrinsics = torch.stack(
        [
            torch.stack([fx, zero, cx], dim=-1),
            torch.stack([zero, fy, cy], dim=-1),
            torch.stack([zero, zero, one], dim=-1),
        ],
        dim=-2,
    )
    return intrinsics, extrinsics


def orbit_pivot(extrinsics: Tensor) -> Tensor:
    """The point [3] closest (least squares) to the optical axes of cameras E [N, 4, 4].

    For a capture dome this is the point every camera looks at. If the axes are (nearly)
    parallel the problem has no unique answer and the mean camera centre is returned.
    """
    centres, forward = camera_centers(extrinsics), camera_forward(extrinsics)
    eye = torch.eye(3, dtype=centres.dtype, device=centres.device)
    # Projector onto the plane orthogonal to each axis: distance of p to axis = |P (p - c)|.
    projectors = eye - torch.einsum("ni,nj->nij", forward, forward)
    lhs = projectors.sum(dim=0)
    rhs = torch.einsum("nij,nj->i", projectors, centres)
    singular = torch.linalg.svdvals(lhs)
    if bool(singular[-1] < 1e-6 * singular[0]):
        return centres.mean(dim=0)
    return torch.linalg.solve(lhs, rhs)


def relative_azimuth_deg(
    extrinsics: Tensor,
    ref_extrinsics: Tensor,
    up: Vector = WORLD_UP,
    pivot: Tensor | None = None,
) -> Tensor:
    """Azimuth [N] in [0, 360) of each camera centre around the vertical axis, relative to the ref.

    The vertical axis is ``up`` through ``pivot`` (default: :func:`orbit_pivot` of all cameras,
    reference included). Angles grow counter-clockwise seen from above (right-hand rule about up).
    extrinsics: [N, 4, 4]; ref_extrinsics: [4, 4] or [1, 4, 4].
    """
    ref_extrinsics = ref_extrinsics.reshape(-1, 4, 4)[:1]
    if pivot is None:
        pivot = orbit_pivot(torch.cat([extrinsics, ref_extrinsics], dim=0))
    axis = normalize(_vec(up, extrinsics))

    def horizontal(points: Tensor) -> Tensor:
        offset = points - pivot
        return offset - (offset @ axis).unsqueeze(-1) * axis

    views = horizontal(camera_centers(extrinsics))  # [N, 3]
    ref = horizontal(camera_centers(ref_extrinsics))  # [1, 3]
    sine = torch.cross(ref.expand_as(views), views, dim=-1) @ axis
    cosine = (views * ref).sum(dim=-1)
    azimuth = torch.rad2deg(torch.atan2(sine, cosine)).remainder(360.0)
    # A hair below zero wraps to 360.0 in float32; keep the range half-open.
    return torch.where(azimuth >= 360.0, azimuth - 360.0, azimuth)
