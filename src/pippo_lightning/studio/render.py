"""A small signed-distance-field renderer in torch for the synthetic studio.

Scenes are unions of capsules, (clipped) ellipsoids and rounded boxes. Primitives of the "body"
group merge with a smooth minimum (soft joints at neck, shoulders, hips); "detail" primitives
(eyes, nose, hair, emblems) join with a hard minimum so they keep crisp edges. Rendering is sphere
tracing of every pixel ray of every view in one batch, Lambert shading from a fixed key and fill
light plus ambient (fixed in the world, so all views of a subject are lit consistently), on a
constant background. Cameras follow :mod:`pippo_lightning.geometry.cameras`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from pippo_lightning.geometry.anchors import box_downsample
from pippo_lightning.geometry.cameras import normalize, scale_intrinsics
from pippo_lightning.geometry.plucker import camera_rays
from pippo_lightning.studio.scene import BACKGROUND_ID, PATTERNS, Lighting, SdfScene


@dataclass
class RenderResult:
    """Per-view renders: rgb [N, 3, H, W] in [0, 1]; primitive_id [N, H, W] (-1 = background);
    depth [N, H, W] ray distance to the surface (inf = background)."""

    rgb: Tensor
    primitive_id: Tensor
    depth: Tensor


@dataclass(frozen=True)
class TraceSettings:
    max_steps: int = 96
    hit_epsilon: float = 1e-3  # world units; well below a pixel's footprint at studio distances
    step_scale: float = 0.9  # < 1 because the ellipsoid distance is only a bound


def render_scene(
    scene: SdfScene,
    intrinsics: Tensor,
    extrinsics: Tensor,
    height: int,
    width: int,
    background: Sequence[float] = (0.85, 0.85, 0.85),
    lighting: Lighting | None = None,
    supersample: int = 1,
    trace: TraceSettings | None = None,
) -> RenderResult:
    """Render ``scene`` from N cameras (intrinsics [N, 3, 3], extrinsics [N, 4, 4]) at H x W.

    ``supersample`` s renders s x s rays per pixel and box-filters them (anti-aliased edges);
    ``primitive_id`` and ``depth`` then come from the sub-sample nearest each pixel centre.
    """
    lighting = lighting or Lighting()
    trace = trace or TraceSettings()
    s = supersample
    k = scale_intrinsics(intrinsics, s, s)
    origins, directions = camera_rays(k, extrinsics, height * s, width * s)
    n = origins.shape[0]
    origins = rearrange(origins, "n h w c -> (n h w) c")
    directions = rearrange(directions, "n h w c -> (n h w) c")
    t, hit = _sphere_trace(scene, origins, directions, trace)
    rgb = torch.as_tensor(background, dtype=torch.float32).expand(origins.shape[0], 3).clone()
    ids = torch.full((origins.shape[0],), BACKGROUND_ID, dtype=torch.long)
    hit_idx = hit.nonzero().squeeze(1)
    if hit_idx.numel():
        points = origins[hit_idx] + t[hit_idx, None] * directions[hit_idx]
        rgb[hit_idx], ids[hit_idx] = _shade(scene, points, lighting)
    depth = torch.where(hit, t, torch.full_like(t, float("inf")))
    grid = "(n h w) -> n h w"
    rgb = box_downsample(rearrange(rgb, "(n h w) c -> n c h w", n=n, h=height * s), s)
    centre = s // 2
    ids = rearrange(ids, grid, n=n, h=height * s)[:, centre::s, centre::s]
    depth = rearrange(depth, grid, n=n, h=height * s)[:, centre::s, centre::s]
    return RenderResult(rgb=rgb, primitive_id=ids, depth=depth)


def _sphere_trace(
    scene: SdfScene, origins: Tensor, directions: Tensor, settings: TraceSettings
) -> tuple[Tensor, Tensor]:
    """March rays [R, 3] through the scene; returns distance t [R] and hit mask [R]."""
    t_near, t_far = _bound_interval(scene, origins, directions)
    t = t_near.clone()
    hit = torch.zeros_like(t, dtype=torch.bool)
    # Only rays still marching are evaluated: most rays finish (hit or escape) in a few steps.
    active = (t_near < t_far).nonzero().squeeze(1)
    for _ in range(settings.max_steps):
        if active.numel() == 0:
            break
        dist = scene.distance(origins[active] + t[active, None] * directions[active])
        converged = dist < settings.hit_epsilon
        hit[active[converged]] = True
        t[active] += torch.where(converged, torch.zeros_like(dist), dist * settings.step_scale)
        still = ~converged & (t[active] < t_far[active])
        active = active[still]
    return t, hit


def _bound_interval(scene: SdfScene, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Entry/exit distances [R] of each ray through the scene's bounding sphere (empty: near > far)."""
    offset = origins - scene.bound_centre
    half_b = (offset * directions).sum(-1)
    disc = half_b**2 - ((offset * offset).sum(-1) - scene.bound_radius**2)
    root = disc.clamp_min(0.0).sqrt()
    near = (-half_b - root).clamp_min(0.0)
    far = torch.where(disc > 0, -half_b + root, torch.full_like(root, -1.0))
    return near, far


_TETRAHEDRON = torch.tensor(
    [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]]
)


def _normals(scene: SdfScene, points: Tensor, step: float = 1e-3) -> Tensor:
    """Unit surface normals [R, 3] from four tetrahedral distance samples (cheaper than 6)."""
    offsets = _TETRAHEDRON.to(points) * step  # [4, 3]
    samples = scene.distance(rearrange(points[:, None, :] + offsets, "r k c -> (r k) c"))
    samples = rearrange(samples, "(r k) -> r k", k=4)
    return normalize(torch.einsum("rk,kc->rc", samples, offsets))


def _shade(scene: SdfScene, points: Tensor, lighting: Lighting) -> tuple[Tensor, Tensor]:
    """Colour [R, 3] and primitive id [R] of surface points [R, 3]."""
    ids = scene.primitive_distances(points).argmin(dim=1)
    albedo = _albedo(scene, points, ids)
    normals = _normals(scene, points)
    shade = torch.full_like(points[:, 0], lighting.ambient)
    for direction, intensity in (
        (lighting.key_direction, lighting.key_intensity),
        (lighting.fill_direction, lighting.fill_intensity),
    ):
        towards = normalize(torch.as_tensor(direction, dtype=points.dtype))
        shade = shade + intensity * (normals @ towards).clamp_min(0.0)
    return (albedo * shade[:, None]).clamp(0.0, 1.0), ids


def _albedo(scene: SdfScene, points: Tensor, ids: Tensor) -> Tensor:
    """Base colour [R, 3]: stripes or checks, then grain, in the scene's pattern frame."""
    local = (points - scene.pattern_origin) @ scene.pattern_rotation.T
    cells = torch.floor(local * scene.frequency[ids, None]).long()
    # Each band / cell takes a hashed colour: a periodic pattern gives every crossing the same
    # neighbourhood, and keypoint matchers then pair crossings that are a period apart.
    stripes = _lattice_value(cells * torch.tensor([0, 1, 0], device=cells.device), salt=101) > 0
    checks = _lattice_value(cells, salt=202) > 0
    pattern = scene.pattern[ids]
    use_secondary = ((pattern == PATTERNS.index("stripes")) & stripes) | (
        (pattern == PATTERNS.index("checks")) & checks
    )
    colour = torch.where(use_secondary[:, None], scene.secondary[ids], scene.albedo[ids])
    grain = scene.grain[ids]  # [R]
    if bool((grain > 0).any()):
        colour = colour * (1.0 + grain[:, None] * fabric_noise(local)[:, None])
    return colour.clamp(0.0, 1.0)


#: Cell sizes (world units) and weights of the grain's octaves: blobs of 3-6 cm, a few pixels
#: wide at 256 px, which is what keypoint detectors latch on to. Finer cells would alias into
#: per-view speckle that no two cameras agree on.
GRAIN_OCTAVES: tuple[tuple[float, float], ...] = ((0.06, 0.7), (0.03, 0.3))


#: Stretch of the summed octaves before clamping to [-1, 1]: interpolated value noise stays
#: near 0 (std ~0.3), and a faint print gives too few keypoints to match at 256 px.
GRAIN_CONTRAST = 2.0


def fabric_noise(points: Tensor) -> Tensor:
    """Solid multi-octave value noise [R] in [-1, 1] at points [R, 3]; no period, no seams."""
    total = torch.zeros_like(points[:, 0])
    for octave, (cell, weight) in enumerate(GRAIN_OCTAVES):
        total = total + weight * _value_noise(points / cell, salt=octave)
    return (GRAIN_CONTRAST * total).clamp(-1.0, 1.0)


def _value_noise(scaled: Tensor, salt: int) -> Tensor:
    """Smoothly interpolated hashed lattice values [R] in [-1, 1] at points [R, 3] (in cells)."""
    corner = torch.floor(scaled)
    frac = scaled - corner
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: no gradient seams at cell faces
    corner = corner.long()
    total = torch.zeros_like(scaled[:, 0])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                offset = torch.tensor([dx, dy, dz], device=scaled.device)
                weight = torch.prod(torch.where(offset.bool(), frac, 1.0 - frac), dim=1)
                total = total + weight * _lattice_value(corner + offset, salt).to(scaled.dtype)
    return total


def _lattice_value(cells: Tensor, salt: int) -> Tensor:
    """A pseudo-random value [R] in [-1, 1] per integer lattice point [R, 3].

    An integer hash (not a random table) so the texture is unbounded, identical on every
    platform and needs no state; 31-bit arithmetic stays exact in int64.
    """
    mask = (1 << 31) - 1
    h = (cells[:, 0] * 73856093 + cells[:, 1] * 19349663 + cells[:, 2] * 83492791 + salt) & mask
    for _ in range(3):
        h = ((h ^ (h >> 13)) * 1274126177) & mask
    return h.double().div(mask).mul(2.0).sub(1.0)
