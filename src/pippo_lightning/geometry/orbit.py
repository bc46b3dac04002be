"""Inference cameras: a turntable orbit, a frontal reference camera, cameras from a file.

Studio convention (see :mod:`.cameras`): metres, +y up, the subject stands at the origin facing
+z, azimuth 0 on +z and growing counter-clockwise seen from above; cameras are OpenCV
(x right, y down, z forward), extrinsics world→camera, intrinsics in pixels.

The defaults reproduce the synthetic studio the models are trained on, so a model sees
inference cameras like its training cameras: the dome (radius 3.2 m, vertical FOV 36°) looks at
the pivot (0, 0.95, 0); the reference camera is frontal, 2.8 m out, FOV 40°, at head height.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.cameras import (
    WORLD_UP,
    intrinsics_from_fov,
    look_at,
    make_extrinsics,
    scale_intrinsics,
    spherical_direction,
)

#: The studio dome's look-at point (``StudioConfig.target_height``).
STUDIO_PIVOT: tuple[float, float, float] = (0.0, 0.95, 0.0)
#: Mean head-centre height of studio subjects (64 training subjects: 1.65 m, std 0.11 m).
STUDIO_HEAD_HEIGHT = 1.65
STUDIO_DOME_RADIUS = 3.2
STUDIO_DOME_FOV_DEG = 36.0
STUDIO_REF_RADIUS = 2.8
STUDIO_REF_FOV_DEG = 40.0

Cameras = tuple[Tensor, Tensor]  # K [N, 3, 3], E [N, 4, 4]


class CameraFileError(PippoError, ValueError):
    """A camera file is missing, not JSON, or does not follow the documented layout."""


def turntable_cameras(
    num_views: int,
    elevation_deg: float = 10.0,
    radius: float = STUDIO_DOME_RADIUS,
    pivot: Sequence[float] = STUDIO_PIVOT,
    start_azimuth_deg: float = 0.0,
    fov_deg: float = STUDIO_DOME_FOV_DEG,
    resolution: int = 64,
) -> Cameras:
    """``num_views`` cameras evenly spaced in azimuth around ``pivot``, all looking at it.

    View k sits at azimuth ``start_azimuth_deg + 360 k / num_views`` (counter-clockwise from +z,
    so view 0 faces the subject with the default start), ``elevation_deg`` above the pivot's
    horizontal plane, ``radius`` from the pivot. Returns K [N, 3, 3] for a square image of
    ``resolution`` pixels (vertical FOV ``fov_deg``) and world→camera E [N, 4, 4].
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if radius <= 0 or not 0 < fov_deg < 180:
        raise ValueError(f"need radius > 0 and fov_deg in (0, 180), got {radius}, {fov_deg}")
    if not -90.0 < elevation_deg < 90.0:
        # At ±90° every camera would look straight along the up axis: no image "up" exists.
        raise ValueError(f"elevation_deg must be in (-90, 90), got {elevation_deg}")
    azimuth = start_azimuth_deg + 360.0 * torch.arange(num_views, dtype=torch.float32) / num_views
    elevation = torch.full_like(azimuth, float(elevation_deg))
    centre = torch.tensor(pivot, dtype=torch.float32)
    eyes = centre + radius * spherical_direction(azimuth, elevation)  # [N, 3]
    extrinsics = look_at(eyes, centre.expand_as(eyes), torch.tensor(WORLD_UP).expand_as(eyes))
    intrinsics = intrinsics_from_fov(fov_deg, resolution, resolution).expand(num_views, 3, 3)
    return intrinsics.clone(), extrinsics


def frontal_camera(
    radius: float = STUDIO_REF_RADIUS,
    height: float = STUDIO_HEAD_HEIGHT,
    target: Sequence[float] = STUDIO_PIVOT,
    fov_deg: float = STUDIO_REF_FOV_DEG,
    resolution: int = 64,
) -> Cameras:
    """The reference camera: at (0, ``height``, ``radius``) on +z, looking at ``target``.

    As in the studio, it stands at the subject's head height and looks at the body's centre,
    so a photo framed like the studio's reference views is "seen from" it. Returns K [1, 3, 3],
    E [1, 4, 4].
    """
    eye = torch.tensor([0.0, float(height), float(radius)])
    extrinsics = look_at(eye, torch.tensor(target, dtype=torch.float32), WORLD_UP)[None]
    return intrinsics_from_fov(fov_deg, resolution, resolution)[None], extrinsics


# ------------------------------------------------------------------------------ camera files


def cameras_from_file(path: str | Path, resolution: int | None = None) -> Cameras:
    """Cameras from a JSON file → K [N, 3, 3], E [N, 4, 4] (world→camera, OpenCV).

    Layout (world in the studio convention of this module)::

        {"width": 1024, "height": 1024,             # the image size K refers to (optional)
         "cameras": [{"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                      "R": [[...], [...], [...]],   # world→camera rotation
                      "t": [tx, ty, tz]},           # world→camera translation (metres)
                     ...]}

    A bare list of cameras is accepted too. With ``resolution`` given and a width/height in
    the file, K is rescaled to a square ``resolution`` image; without a width/height, K is
    taken to be in pixels of that image already.
    """
    path = Path(path)
    if not path.is_file():
        raise CameraFileError(f"camera file {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CameraFileError(f"{path}: cannot read the camera file as JSON: {err}") from err
    entries = content.get("cameras") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise CameraFileError(f"{path}: expected a non-empty list under 'cameras'")
    intrinsics = torch.stack([_matrix(c, "K", (3, 3), path, i) for i, c in enumerate(entries)])
    rotations = torch.stack([_matrix(c, "R", (3, 3), path, i) for i, c in enumerate(entries)])
    translations = torch.stack([_matrix(c, "t", (3,), path, i) for i, c in enumerate(entries)])
    _check_rotations(rotations, path)
    if resolution is not None and isinstance(content, dict) and "width" in content:
        width, height = float(content["width"]), float(content.get("height", content["width"]))
        intrinsics = scale_intrinsics(intrinsics, resolution / width, resolution / height)
    return intrinsics, make_extrinsics(rotations, translations)


def _matrix(camera: Any, key: str, shape: tuple[int, ...], path: Path, index: int) -> Tensor:
    """Entry ``key`` of camera ``index`` as a float32 tensor of ``shape``, or a clear error."""
    if not isinstance(camera, dict) or key not in camera:
        raise CameraFileError(f"{path}: camera {index} has no {key!r} entry")
    try:
        value = torch.tensor(camera[key], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise CameraFileError(f"{path}: camera {index} {key!r} is not numeric: {err}") from err
    if tuple(value.shape) != shape or not bool(torch.isfinite(value).all()):
        raise CameraFileError(
            f"{path}: camera {index} {key!r} must be finite with shape {list(shape)}, "
            f"got {list(value.shape)}"
        )
    return value


def _check_rotations(rotations: Tensor, path: Path, tol: float = 1e-3) -> None:
    """Reject R that are not proper rotations (scaled, reflected, or not a rotation at all)."""
    eye = torch.eye(3).expand_as(rotations)
    orthogonal = (rotations @ rotations.transpose(-1, -2) - eye).abs().amax(dim=(-1, -2)) < tol
    proper = (torch.linalg.det(rotations) - 1.0).abs() < tol
    bad = (~(orthogonal & proper)).nonzero().flatten().tolist()
    if bad:
        raise CameraFileError(f"{path}: 'R' of camera(s) {bad} is not a rotation matrix")


def write_cameras_file(
    path: str | Path, intrinsics: Tensor, extrinsics: Tensor, resolution: int
) -> Path:
    """Write K [N, 3, 3] / E [N, 4, 4] in the layout :func:`cameras_from_file` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cameras = [
        {"K": k.tolist(), "R": e[:3, :3].tolist(), "t": e[:3, 3].tolist()}
        for k, e in zip(intrinsics.double(), extrinsics.double())
    ]
    path.write_text(
        json.dumps({"width": resolution, "height": resolution, "cameras": cameras}, indent=1)
    )
    return path
