"""A capture's rig in the package convention: converting cameras, checking the conventions a user
declared against what the cameras show, and loading a whole rig.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from pippo_lightning.captures.capture import (
    GL_TO_CV,
    MIN_SEEING,
    PLAUSIBLE_DISTANCE_M,
    UNIT_TO_METRES,
    CaptureError,
    Conventions,
    RawCameras,
    Rig,
    find_camera_file,
    read_cameras,
)
from pippo_lightning.geometry.cameras import (
    camera_centers,
    orbit_pivot,
    project_points,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- conventions
def to_package_convention(
    intrinsics: Tensor, matrices: Tensor, sizes: Sequence[tuple[int, int]], conventions: Conventions
) -> tuple[Tensor, Tensor]:
    """K [N, 3, 3] in pixels and world->camera E [N, 4, 4] with OpenCV axes, in metres."""
    k = intrinsics.double().clone()
    if conventions.intrinsics_units == "normalized":
        size = torch.tensor(sizes, dtype=torch.float64)  # [N, 2] (W, H)
        k[:, 0] *= size[:, :1]
        k[:, 1] *= size[:, 1:]
    e = matrices.double()
    if conventions.extrinsics == "camera_to_world":
        e = torch.linalg.inv(e)
    if conventions.axes == "opengl":
        e = GL_TO_CV @ e
    e = e.clone()
    e[:, :3, 3] *= UNIT_TO_METRES[conventions.world_unit]
    return k, e


def seeing_fraction(k: Tensor, e: Tensor, sizes: Sequence[tuple[int, int]], point: Tensor) -> float:
    """Fraction of cameras with ``point`` [3] in front of them and inside their image."""
    uv, depth = project_points(point.expand(k.shape[0], 1, 3), k, e)
    size = torch.tensor(sizes, dtype=k.dtype)  # [N, 2]
    uv = uv[:, 0]
    inside = (uv >= 0).all(dim=1) & (uv <= size).all(dim=1) & (depth[:, 0] > 0)
    return float(inside.double().mean())


def subject_point(e: Tensor, head: Tensor | None) -> Tensor:
    """The head if known, else the point the cameras look at (least squares)."""
    return head if head is not None else orbit_pivot(e)


def check_conventions(
    raw: RawCameras,
    conventions: Conventions,
    head_center: Tensor | None = None,
    where: str = "cameras",
) -> None:
    """Raise :class:`CaptureError` naming the fix when the cameras do not see the subject.

    Tries the declared conventions and the three other (extrinsics, axes) combinations; the
    subject is the head centre (in the file's world unit) if given, else the cameras' pivot.
    """
    sizes = raw.sizes
    if any(w <= 0 or h <= 0 for w, h in sizes):
        raise CaptureError(f"{where}: image sizes unknown; cannot check the cameras")
    k0 = raw.intrinsics.double()
    fx, cx, cy = k0[:, 0, 0], k0[:, 0, 2], k0[:, 1, 2]
    if conventions.intrinsics_units == "pixels" and bool(
        ((fx.abs() < 4) & (cx.abs() <= 1) & (cy.abs() <= 1)).all()
    ):
        raise CaptureError(
            f"{where}: intrinsics look normalised by the image size (fx={float(fx[0]):.4g}, "
            f"cx={float(cx[0]):.4g}) but pixels were declared; pass --intrinsics-units "
            'normalized (or "intrinsics_units": "normalized" in cameras.json)'
        )
    scores = {}
    for extrinsics in ("world_to_camera", "camera_to_world"):
        for axes in ("opencv", "opengl"):
            trial = replace(conventions, extrinsics=extrinsics, axes=axes, world_unit="m")
            k, e = to_package_convention(raw.intrinsics, raw.matrices, sizes, trial)
            point = subject_point(e, head_center)
            scores[(extrinsics, axes)] = seeing_fraction(k, e, sizes, point)
    declared = (conventions.extrinsics, conventions.axes)
    best = max(scores, key=lambda key: scores[key])
    if scores[declared] >= MIN_SEEING and scores[declared] >= scores[best]:
        return
    subject = "the head" if head_center is not None else "the point the cameras look at"
    if scores[best] >= MIN_SEEING and best != declared:
        fixes = []
        if best[0] != declared[0]:
            fixes.append(f"--extrinsics {best[0]}")
        if best[1] != declared[1]:
            fixes.append(f"--axes {best[1]}")
        raise CaptureError(
            f"{where}: declared {declared[0]} with {declared[1]} axes, but then only "
            f"{scores[declared]:.0%} of the cameras see {subject} (the cameras face away from "
            f"the subject); as {best[0]} with {best[1]} axes {scores[best]:.0%} do. "
            f"Pass {' '.join(fixes)}"
        )
    raise CaptureError(
        f"{where}: only {scores[declared]:.0%} of the cameras see {subject} under any "
        f"convention (best: {best[0]}, {best[1]} axes, {scores[best]:.0%}); check the "
        "calibration, the head positions and the image sizes"
    )


def load_rig(
    directory: Path,
    conventions: Conventions | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    head_center: Tensor | None = None,
) -> Rig:
    """Read, check and convert the cameras of a capture directory.

    ``conventions`` given explicitly override the file's own declarations; ``sizes`` fill in
    image sizes the file does not state; ``head_center`` is in the file's world unit.
    """
    path = find_camera_file(directory)
    raw = read_cameras(path)
    declared = Conventions(**raw.declared) if raw.declared else Conventions()
    conventions = conventions or declared
    if sizes:
        raw.sizes = [
            size if size[0] > 0 else tuple(sizes.get(name, (0, 0)))
            for name, size in zip(raw.names, raw.sizes)
        ]
    raw = _known_sizes_only(raw, path)
    check_conventions(raw, conventions, head_center, str(path))
    k, e = to_package_convention(raw.intrinsics, raw.matrices, raw.sizes, conventions)
    _check_distances(e, head_center, conventions, path)
    return Rig(list(raw.names), k, e, raw.distortion.double(), list(raw.sizes))


def _known_sizes_only(raw: RawCameras, path: Path) -> RawCameras:
    """Drop cameras whose image size is unknown (no images, no size in the file): they cannot
    be checked or used. Logged, and an error if none remain."""
    keep = [i for i, (w, h) in enumerate(raw.sizes) if w > 0 and h > 0]
    if not keep:
        raise CaptureError(f"{path}: no camera has images (or a stated width and height)")
    if len(keep) < len(raw.names):
        dropped = [n for i, n in enumerate(raw.names) if i not in keep]
        log.warning("%s: cameras without images are ignored: %s", path, ", ".join(dropped[:10]))
    index = torch.tensor(keep)
    return RawCameras(
        [raw.names[i] for i in keep],
        raw.intrinsics[index],
        raw.matrices[index],
        raw.distortion[index],
        [raw.sizes[i] for i in keep],
        raw.declared,
    )


def _check_distances(
    e: Tensor, head_center: Tensor | None, conventions: Conventions, path: Path
) -> None:
    """Warn when camera distances are implausible in metres (a wrong world unit)."""
    scale = UNIT_TO_METRES[conventions.world_unit]
    point = head_center * scale if head_center is not None else orbit_pivot(e)
    distance = float((camera_centers(e) - point).norm(dim=-1).median())
    low, high = PLAUSIBLE_DISTANCE_M
    if not low <= distance <= high:
        log.warning(
            "%s: cameras are %.3g m from the subject: is the world unit right (world_unit=%s)?",
            path,
            distance,
            conventions.world_unit,
        )
