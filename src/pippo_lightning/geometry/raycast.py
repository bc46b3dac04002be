"""Analytic ray / primitive intersections, batched over rays (used to draw exact markers)."""

from __future__ import annotations

import torch
from torch import Tensor

_MISS = float("inf")


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def ray_sphere(origins: Tensor, directions: Tensor, centre: Tensor, radius: float) -> Tensor:
    """Distance [...] along unit rays [..., 3] to the first hit of a sphere; inf on a miss.

    Rays starting inside the sphere report a miss: markers are always seen from outside.
    """
    offset = origins - centre
    half_b = _dot(offset, directions)
    c = _dot(offset, offset) - radius**2
    disc = half_b**2 - c
    t = -half_b - disc.clamp_min(0.0).sqrt()
    hit = (disc >= 0) & (t > 0)
    return torch.where(hit, t, torch.full_like(t, _MISS))


def ray_capsule(
    origins: Tensor, directions: Tensor, start: Tensor, end: Tensor, radius: float
) -> Tensor:
    """Distance [...] along unit rays [..., 3] to the first hit of a capsule; inf on a miss.

    The capsule is the set of points within ``radius`` of the segment start-end: a cylinder hit
    counts only between the caps, otherwise the nearer end sphere decides.
    """
    axis = end - start
    offset = origins - start
    axis_len2 = _dot(axis, axis)
    axis_dir = _dot(axis, directions)
    axis_off = _dot(axis, offset)
    # Quadratic of the infinite cylinder, scaled by |axis|^2 to avoid a division.
    a = axis_len2 - axis_dir**2
    half_b = axis_len2 * _dot(directions, offset) - axis_off * axis_dir
    c = axis_len2 * _dot(offset, offset) - axis_off**2 - radius**2 * axis_len2
    disc = half_b**2 - a * c
    safe_a = torch.where(a.abs() > 1e-12, a, torch.ones_like(a))
    t_side = (-half_b - disc.clamp_min(0.0).sqrt()) / safe_a
    along = axis_off + t_side * axis_dir
    side_hit = (disc >= 0) & (a.abs() > 1e-12) & (along > 0) & (along < axis_len2) & (t_side > 0)
    t_caps = torch.minimum(
        ray_sphere(origins, directions, start, radius), ray_sphere(origins, directions, end, radius)
    )
    return torch.where(side_hit, t_side, t_caps)
