"""Scenes of the synthetic studio as signed distance fields: primitives (capsules, ellipsoids,
rounded boxes), their materials and lighting, and a builder that assembles a subject from parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from pippo_lightning.geometry.cameras import normalize

Pattern = Literal["solid", "stripes", "checks"]


PATTERNS: tuple[Pattern, ...] = ("solid", "stripes", "checks")


#: Primitive id reported for background pixels.
BACKGROUND_ID = -1


@dataclass(frozen=True)
class Material:
    """Albedo in [0, 1]; patterns are solid textures in the scene's pattern frame.

    stripes: bands across the frame's y axis; checks: 3-D cells. ``frequency`` is in cells per
    world unit; each band or cell is ``albedo`` or ``secondary`` by a hash of its index, so the
    pattern never repeats (irregular stripes and patchwork, not a strict alternation).
    ``grain`` modulates the colour by a solid, non-periodic noise (fabric print and weave):
    0 keeps it flat, 0.3 varies brightness by up to about +-30 %. Like the patterns it is fixed
    to the surface, so every camera sees the same texture.
    """

    albedo: tuple[float, float, float]
    secondary: tuple[float, float, float] | None = None
    pattern: Pattern = "solid"
    frequency: float = 0.0
    grain: float = 0.0


@dataclass(frozen=True)
class Lighting:
    """Directions point from the scene towards the light (world coordinates)."""

    ambient: float = 0.35
    key_direction: tuple[float, float, float] = (0.45, 0.75, 0.5)
    key_intensity: float = 0.7
    fill_direction: tuple[float, float, float] = (-0.6, 0.3, -0.75)
    fill_intensity: float = 0.25


@dataclass
class SdfScene:
    """Primitive parameters as stacked tensors; build one with :class:`SceneBuilder`.

    Primitive ids run over capsules, then ellipsoids, then boxes (P primitives in all).
    Rotations map world offsets to the primitive's local frame.
    """

    capsule_start: Tensor  # [Nc, 3]
    capsule_end: Tensor  # [Nc, 3]
    capsule_radius: Tensor  # [Nc]
    ellipsoid_centre: Tensor  # [Ne, 3]
    ellipsoid_rotation: Tensor  # [Ne, 3, 3]
    ellipsoid_radii: Tensor  # [Ne, 3]
    ellipsoid_clip_normal: Tensor  # [Ne, 3] local; keeps points with q . n >= offset
    ellipsoid_clip_offset: Tensor  # [Ne]
    box_centre: Tensor  # [Nb, 3]
    box_rotation: Tensor  # [Nb, 3, 3]
    box_half_size: Tensor  # [Nb, 3]
    box_rounding: Tensor  # [Nb]
    blend: Tensor  # [P] bool: smooth-union group (else hard detail)
    albedo: Tensor  # [P, 3]
    secondary: Tensor  # [P, 3]
    pattern: Tensor  # [P] long, index into PATTERNS
    frequency: Tensor  # [P]
    grain: Tensor  # [P]
    names: list[str]  # [P]
    bound_centre: Tensor  # [3]
    bound_radius: float
    pattern_origin: Tensor = field(default_factory=lambda: torch.zeros(3))
    pattern_rotation: Tensor = field(default_factory=lambda: torch.eye(3))
    blend_radius: float = 0.02

    def primitive_id(self, name: str) -> int:
        """Index of the primitive called ``name`` (as returned in ``RenderResult.primitive_id``)."""
        return self.names.index(name)

    def primitive_distances(self, points: Tensor) -> Tensor:
        """Signed distances [R, P] from points [R, 3] to every primitive."""
        return torch.cat(
            [
                _capsule_sdf(points, self.capsule_start, self.capsule_end, self.capsule_radius),
                _ellipsoid_sdf(points, self),
                _rounded_box_sdf(points, self),
            ],
            dim=1,
        )

    def combine(self, distances: Tensor) -> Tensor:
        """Scene distance [R] from per-primitive distances [R, P]."""
        inf = torch.full_like(distances[:, 0], float("inf"))
        body = distances[:, self.blend]
        details = distances[:, ~self.blend]
        k = self.blend_radius
        # Exponential smooth minimum: order-free, and never above the true minimum, so sphere
        # tracing stays conservative.
        smooth = -k * torch.logsumexp(-body / k, dim=1) if body.shape[1] else inf
        hard = details.min(dim=1).values if details.shape[1] else inf
        return torch.minimum(smooth, hard)

    def distance(self, points: Tensor) -> Tensor:
        """Scene signed distance [R] at points [R, 3]."""
        return self.combine(self.primitive_distances(points))


def _capsule_sdf(points: Tensor, start: Tensor, end: Tensor, radius: Tensor) -> Tensor:
    axis = end - start  # [Nc, 3]
    axis_len2 = (axis * axis).sum(-1).clamp_min(1e-12)
    along = points @ axis.T - (start * axis).sum(-1)  # (p - a) . axis, [R, Nc]
    offset_len2 = (
        (points * points).sum(-1, keepdim=True) - 2 * points @ start.T + (start * start).sum(-1)
    )
    h = (along / axis_len2).clamp(0.0, 1.0)
    # |p - a - h axis|^2 expanded; clamped because rounding can dip just below zero.
    dist2 = offset_len2 - h * (2 * along - h * axis_len2)
    return dist2.clamp_min(0.0).sqrt() - radius


def _local(points: Tensor, centre: Tensor, rotation: Tensor, scale: Tensor | None = None) -> Tensor:
    """Points [R, 3] in each primitive's frame, optionally divided per axis by ``scale``: [R, N, 3]."""
    n = rotation.shape[0]
    linear = rearrange(rotation, "n j i -> i n j")  # q_nj = sum_i R_nji p_i - (R c)_nj
    offset = torch.einsum("nji,ni->nj", rotation, centre)
    if scale is not None:
        linear, offset = linear / scale, offset / scale
    flat = points @ rearrange(linear, "i n j -> i (n j)") - offset.reshape(-1)
    return flat.view(points.shape[0], n, 3)


def _ellipsoid_sdf(points: Tensor, scene: SdfScene) -> Tensor:
    centre, rotation, radii = (
        scene.ellipsoid_centre,
        scene.ellipsoid_rotation,
        scene.ellipsoid_radii,
    )
    # Quilez's bound: exact for spheres, close to the true distance near the surface.
    k0 = _local(points, centre, rotation, radii).norm(dim=-1)
    k1 = _local(points, centre, rotation, radii**2).norm(dim=-1).clamp_min(1e-9)
    ellipsoid = k0 * (k0 - 1.0) / k1
    world_normal = torch.einsum("nji,nj->ni", rotation, scene.ellipsoid_clip_normal)  # [Ne, 3]
    height = points @ world_normal.T - (centre * world_normal).sum(-1)  # q . n, [R, Ne]
    return torch.maximum(ellipsoid, scene.ellipsoid_clip_offset - height)


def _rounded_box_sdf(points: Tensor, scene: SdfScene) -> Tensor:
    local = _local(points, scene.box_centre, scene.box_rotation)
    rounding = scene.box_rounding[:, None]
    q = local.abs() - scene.box_half_size + rounding
    outside = q.clamp_min(0.0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp_max(0.0)
    return outside + inside - scene.box_rounding


@dataclass(frozen=True)
class _Part:
    """One primitive as added to a :class:`SceneBuilder` (geometry in ``shape``)."""

    name: str
    material: Material
    blend: bool
    shape: dict[str, Tensor]
    bound: tuple[Tensor, float]  # centre, radius of a sphere enclosing the primitive


class SceneBuilder:
    """Collects named primitives with materials, then stacks them into an :class:`SdfScene`."""

    def __init__(self, blend_radius: float = 0.02) -> None:
        self.blend_radius = blend_radius
        self.pattern_origin = torch.zeros(3)
        self.pattern_rotation = torch.eye(3)
        self._parts: dict[str, list[_Part]] = {"capsule": [], "ellipsoid": [], "box": []}

    def capsule(
        self,
        name: str,
        start: Tensor,
        end: Tensor,
        radius: float,
        material: Material,
        blend: bool = True,
    ) -> None:
        start, end = as_float_tensor(start), as_float_tensor(end)
        shape = {"start": start, "end": end, "radius": as_float_tensor(radius)}
        bound = ((start + end) / 2, float((end - start).norm()) / 2 + radius)
        self._parts["capsule"].append(_Part(name, material, blend, shape, bound))

    def ellipsoid(
        self,
        name: str,
        centre: Tensor,
        radii: Sequence[float] | Tensor,
        material: Material,
        rotation: Tensor | None = None,
        clip: tuple[Sequence[float], float] | None = None,
        blend: bool = True,
    ) -> None:
        """``clip`` = (local normal, offset) keeps only local points q with q . normal >= offset."""
        normal, offset = clip if clip is not None else ((0.0, 0.0, 0.0), -1e3)
        shape = {
            "centre": as_float_tensor(centre),
            "rotation": torch.eye(3) if rotation is None else as_float_tensor(rotation),
            "radii": as_float_tensor(radii),
            "clip_normal": normalize(as_float_tensor(normal)),
            "clip_offset": as_float_tensor(offset),
        }
        bound = (shape["centre"], float(shape["radii"].max()))
        self._parts["ellipsoid"].append(_Part(name, material, blend, shape, bound))

    def box(
        self,
        name: str,
        centre: Tensor,
        half_size: Sequence[float] | Tensor,
        rounding: float,
        material: Material,
        rotation: Tensor | None = None,
        blend: bool = True,
    ) -> None:
        shape = {
            "centre": as_float_tensor(centre),
            "rotation": torch.eye(3) if rotation is None else as_float_tensor(rotation),
            "half_size": as_float_tensor(half_size),
            "rounding": as_float_tensor(rounding),
        }
        bound = (shape["centre"], float(shape["half_size"].norm()))
        self._parts["box"].append(_Part(name, material, blend, shape, bound))

    def build(self) -> SdfScene:
        parts = [*self._parts["capsule"], *self._parts["ellipsoid"], *self._parts["box"]]
        if not parts:
            raise ValueError("an SdfScene needs at least one primitive")
        materials = [part.material for part in parts]
        centre, radius = self._bounds(parts)
        return SdfScene(
            capsule_start=self._field("capsule", "start", (3,)),
            capsule_end=self._field("capsule", "end", (3,)),
            capsule_radius=self._field("capsule", "radius", ()),
            ellipsoid_centre=self._field("ellipsoid", "centre", (3,)),
            ellipsoid_rotation=self._field("ellipsoid", "rotation", (3, 3)),
            ellipsoid_radii=self._field("ellipsoid", "radii", (3,)),
            ellipsoid_clip_normal=self._field("ellipsoid", "clip_normal", (3,)),
            ellipsoid_clip_offset=self._field("ellipsoid", "clip_offset", ()),
            box_centre=self._field("box", "centre", (3,)),
            box_rotation=self._field("box", "rotation", (3, 3)),
            box_half_size=self._field("box", "half_size", (3,)),
            box_rounding=self._field("box", "rounding", ()),
            blend=torch.tensor([part.blend for part in parts], dtype=torch.bool),
            albedo=as_float_tensor([m.albedo for m in materials]),
            secondary=as_float_tensor([m.secondary or m.albedo for m in materials]),
            pattern=torch.tensor([PATTERNS.index(m.pattern) for m in materials]),
            frequency=as_float_tensor([m.frequency for m in materials]),
            grain=as_float_tensor([m.grain for m in materials]),
            names=[part.name for part in parts],
            bound_centre=centre,
            bound_radius=radius,
            pattern_origin=self.pattern_origin,
            pattern_rotation=self.pattern_rotation,
            blend_radius=self.blend_radius,
        )

    def _field(self, kind: str, name: str, shape: tuple[int, ...]) -> Tensor:
        """One field of every ``kind`` primitive, stacked: [N, *shape] ([0, *shape] if none)."""
        values = [part.shape[name] for part in self._parts[kind]]
        return torch.stack(values) if values else torch.zeros(0, *shape)

    def _bounds(self, parts: list[_Part]) -> tuple[Tensor, float]:
        """A sphere enclosing every primitive (plus the blend margin)."""
        centres = torch.stack([part.bound[0] for part in parts])
        radii = as_float_tensor([part.bound[1] for part in parts])
        low = (centres - radii[:, None]).amin(0)
        high = (centres + radii[:, None]).amax(0)
        centre = (low + high) / 2
        radius = ((centres - centre).norm(dim=-1) + radii).max() + 2 * self.blend_radius
        return centre, float(radius)


def as_float_tensor(x: float | Sequence[float] | Sequence[Sequence[float]] | Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float32)
