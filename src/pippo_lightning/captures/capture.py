"""Calibrated multi-view captures on disk: cameras (JSON or KRT), images, head poses.

A capture directory (one subject) looks like::

    subject_dir/cameras.json   or   subject_dir/KRT      calibration (formats below)
    subject_dir/images/<camera>/<frame>.png              one image per camera and frame
    subject_dir/images/<camera>.png                      (or one frame only: frame name "0")
    subject_dir/head.json                                optional head pose / 3-D keypoints

``cameras.json``::

    {"world_unit": "m",                      # optional: m | cm | mm (default m)
     "extrinsics": "world_to_camera",        # optional: or camera_to_world
     "axes": "opencv",                       # optional: or opengl (x right, y up, z backwards)
     "intrinsics_units": "pixels",           # optional: or normalized (K divided by W, H)
     "cameras": {"cam0": {"K": [[fx, s, cx], [0, fy, cy], [0, 0, 1]],
                          "R": [[...], [...], [...]], "t": [tx, ty, tz],   # or "E": 3x4 / 4x4
                          "dist": [k1, k2, p1, p2, k3],                     # optional
                          "width": W, "height": H}, ...}}                  # optional

``KRT`` (the Ava-256 / Goliath text layout), per camera: a name line, three lines of K, one line
of distortion coefficients, three lines of world->camera [R | t], a blank line.

``head.json`` holds, for all frames or per frame (``{"<frame>": {...}}``), one of:
``{"center": [x, y, z], "forward": [...], "up": [...]}``,
``{"center": [...], "rotation": 3x3 head->world, columns = subject's left, up, forward}``, or
``{"keypoints": {"left_eye": [...], "right_eye": [...], "nose": [...],
"left_ear": [...], "right_ear": [...]}}`` (ears optional).

Everything is converted to the package convention (:mod:`pippo_lightning.data.schema`): OpenCV
axes, world->camera, intrinsics in pixels, metres. The declared conventions are *checked*: the
subject must lie in front of the cameras and inside their images; when another convention fits
better, the error names the option that fixes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.cameras import (
    camera_centers,
    normalize,
    orbit_pivot,
    project_points,
    to_homogeneous_extrinsics,
)

log = logging.getLogger(__name__)

ExtrinsicsKind = Literal["world_to_camera", "camera_to_world"]
Axes = Literal["opencv", "opengl"]
IntrinsicsUnits = Literal["pixels", "normalized"]

CAMERA_FILES: tuple[str, ...] = ("cameras.json", "KRT", "krt.txt")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
HEAD_FILE = "head.json"
UNIT_TO_METRES: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001}
#: OpenGL camera axes (x right, y up, z backwards) -> OpenCV (x right, y down, z forward).
GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
#: Fraction of cameras that must see the subject for a convention to count as right.
MIN_SEEING = 0.5
#: Distances (metres) from camera to subject beyond which the world unit is probably wrong.
PLAUSIBLE_DISTANCE_M = (0.1, 50.0)


class CaptureError(PippoError):
    """A capture (cameras, images, head file) cannot be read or uses a wrong convention."""


@dataclass(frozen=True)
class Conventions:
    """How a cameras file is written; :func:`to_package_convention` converts from it."""

    extrinsics: ExtrinsicsKind = "world_to_camera"
    axes: Axes = "opencv"
    intrinsics_units: IntrinsicsUnits = "pixels"
    world_unit: str = "m"

    def __post_init__(self) -> None:
        options = {
            "extrinsics": ("world_to_camera", "camera_to_world"),
            "axes": ("opencv", "opengl"),
            "intrinsics_units": ("pixels", "normalized"),
            "world_unit": tuple(UNIT_TO_METRES),
        }
        for name, allowed in options.items():
            if getattr(self, name) not in allowed:
                raise CaptureError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class Rig:
    """Cameras of one capture in the package convention (metres, OpenCV, world->camera)."""

    names: list[str]
    intrinsics: Tensor  # [N, 3, 3] float64, pixels of the camera's full image
    extrinsics: Tensor  # [N, 4, 4] float64, world->camera
    distortion: Tensor  # [N, D] float64 (OpenCV order k1, k2, p1, p2, k3, ...); zeros if none
    sizes: list[tuple[int, int]]  # (width, height) per camera; (0, 0) until known

    def index(self, name: str) -> int:
        if name not in self.names:
            raise CaptureError(f"no camera {name!r}; cameras are {self.names[:8]}...")
        return self.names.index(name)

    def subset(self, indices: Sequence[int]) -> Rig:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Rig(
            [self.names[i] for i in indices],
            self.intrinsics[idx],
            self.extrinsics[idx],
            self.distortion[idx],
            [self.sizes[i] for i in indices],
        )


@dataclass(frozen=True)
class HeadPose:
    """Head centre and unit directions in world coordinates (metres), all [3] float64."""

    center: Tensor
    forward: Tensor
    up: Tensor


# ----------------------------------------------------------------------------- reading cameras
@dataclass
class RawCameras:
    """Cameras as written in a file, before any convention is applied."""

    names: list[str]
    intrinsics: Tensor  # [N, 3, 3]
    matrices: Tensor  # [N, 4, 4] as written (world->camera or camera->world)
    distortion: Tensor  # [N, D]
    sizes: list[tuple[int, int]]
    declared: dict[str, str]  # conventions stated in the file itself


def find_camera_file(directory: Path) -> Path:
    for name in CAMERA_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CaptureError(f"{directory}: no cameras file (expected one of {', '.join(CAMERA_FILES)})")


def read_cameras(path: str | Path) -> RawCameras:
    """Read a ``cameras.json`` or KRT file (by content: JSON starts with '{' or '[')."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CaptureError(f"{path}: cannot read the cameras file: {error}") from error
    try:
        if text.lstrip().startswith(("{", "[")):
            return _parse_json_cameras(json.loads(text))
        return _parse_krt(text)
    except CaptureError as error:
        raise CaptureError(f"{path}: {error}") from error
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise CaptureError(f"{path}: malformed cameras file: {error}") from error


def _parse_json_cameras(data: Any) -> RawCameras:
    declared = {}
    if isinstance(data, dict):
        declared = {
            k: str(data[k])
            for k in ("extrinsics", "axes", "intrinsics_units", "world_unit")
            if k in data
        }
        cameras = data.get("cameras", {k: v for k, v in data.items() if isinstance(v, dict)})
    else:
        cameras = data
    if isinstance(cameras, list):
        cameras = {str(c["name"]): c for c in cameras}
    if not cameras:
        raise CaptureError("no cameras found")
    names, ks, ms, dists, sizes = [], [], [], [], []
    for name, cam in cameras.items():
        k = np.asarray(cam["K"], dtype=np.float64)
        if "E" in cam:
            m = np.asarray(cam["E"], dtype=np.float64)
        else:
            m = np.concatenate(
                [np.asarray(cam["R"], np.float64), np.asarray(cam["t"], np.float64).reshape(3, 1)],
                axis=1,
            )
        if k.shape != (3, 3) or m.shape not in ((3, 4), (4, 4)):
            raise CaptureError(
                f"camera {name!r}: expected K 3x3 and R|t 3x4 (or E 4x4), found K "
                f"{list(k.shape)}, E {list(m.shape)}"
            )
        names.append(str(name))
        ks.append(k)
        ms.append(m[:3])
        dists.append(np.asarray(cam.get("dist", []), dtype=np.float64).ravel())
        sizes.append((int(cam.get("width", 0)), int(cam.get("height", 0))))
    return _raw(names, ks, ms, dists, sizes, declared)


def _parse_krt(text: str) -> RawCameras:
    """Blocks of: name, 3 lines K, 1 line distortion, 3 lines [R | t], then a blank line."""
    lines = [line.strip() for line in text.splitlines()]
    names, ks, ms, dists = [], [], [], []
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        block = lines[i : i + 8]
        if len(block) < 8:
            raise CaptureError(
                f"KRT line {i + 1}: camera {lines[i]!r} has {len(block) - 1} of 7 lines "
                "(3 K, 1 distortion, 3 R|t)"
            )
        name = block[0]
        try:
            k = np.array([[float(x) for x in row.split()] for row in block[1:4]])
            dist = np.array([float(x) for x in block[4].split()])
            m = np.array([[float(x) for x in row.split()] for row in block[5:8]])
        except ValueError as error:
            raise CaptureError(f"KRT camera {name!r} (line {i + 1}): {error}") from error
        if k.shape != (3, 3) or m.shape != (3, 4):
            raise CaptureError(
                f"KRT camera {name!r} (line {i + 1}): expected K 3x3 and R|t 3x4, found "
                f"{list(k.shape)} and {list(m.shape)}"
            )
        names.append(name)
        ks.append(k)
        dists.append(dist)
        ms.append(m)
        i += 8
    if not names:
        raise CaptureError("no cameras found in KRT file")
    return _raw(names, ks, ms, dists, [(0, 0)] * len(names), {})


def _raw(
    names: list[str],
    ks: list[np.ndarray],
    ms: list[np.ndarray],
    dists: list[np.ndarray],
    sizes: list[tuple[int, int]],
    declared: dict[str, str],
) -> RawCameras:
    if len(set(names)) != len(names):
        raise CaptureError(
            f"duplicate camera names: {sorted({n for n in names if names.count(n) > 1})}"
        )
    width = max((len(d) for d in dists), default=0)
    dist = np.zeros((len(dists), width))
    for row, d in enumerate(dists):
        dist[row, : len(d)] = d
    matrices = to_homogeneous_extrinsics(torch.as_tensor(np.stack(ms)))
    return RawCameras(
        names,
        torch.as_tensor(np.stack(ks)),
        matrices,
        torch.as_tensor(dist),
        sizes,
        declared,
    )


def write_cameras_json(
    path: str | Path,
    names: Sequence[str],
    intrinsics: Tensor,
    extrinsics: Tensor,
    sizes: Sequence[tuple[int, int]],
    conventions: Conventions | None = None,
) -> None:
    """Write cameras (K [N, 3, 3], world->camera E [N, 4, 4], package convention) as JSON,
    optionally expressed in other ``conventions`` (used to test the convention guards)."""
    conventions = conventions or Conventions()
    k, m = from_package_convention(intrinsics, extrinsics, sizes, conventions)
    data = {
        **{f: getattr(conventions, f) for f in ("world_unit", "extrinsics", "axes")},
        "intrinsics_units": conventions.intrinsics_units,
        "cameras": {
            name: {
                "K": k[i].tolist(),
                "R": m[i, :3, :3].tolist(),
                "t": m[i, :3, 3].tolist(),
                "width": int(sizes[i][0]),
                "height": int(sizes[i][1]),
            }
            for i, name in enumerate(names)
        },
    }
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def write_krt(
    path: str | Path,
    names: Sequence[str],
    intrinsics: Tensor,
    extrinsics: Tensor,
    world_unit: str = "m",
) -> None:
    """Write cameras (package convention) in the KRT text layout, translations in ``world_unit``."""
    scale = 1.0 / UNIT_TO_METRES[world_unit]
    blocks = []
    for i, name in enumerate(names):
        k = intrinsics[i].double()
        e = extrinsics[i].double().clone()
        e[:3, 3] *= scale
        rows = [name]
        rows += [" ".join(repr(float(v)) for v in k[r]) for r in range(3)]
        rows.append(" ".join(["0.0"] * 5))
        rows += [" ".join(repr(float(v)) for v in e[r]) for r in range(3)]
        blocks.append("\n".join(rows) + "\n")
    Path(path).write_text("\n".join(blocks) + "\n")


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


def from_package_convention(
    intrinsics: Tensor,
    extrinsics: Tensor,
    sizes: Sequence[tuple[int, int]],
    conventions: Conventions,
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`to_package_convention`: (K, 4x4 matrices) as the file would hold them."""
    k = intrinsics.double().clone()
    if conventions.intrinsics_units == "normalized":
        size = torch.tensor(sizes, dtype=torch.float64)
        k[:, 0] /= size[:, :1]
        k[:, 1] /= size[:, 1:]
    e = extrinsics.double().clone()
    e[:, :3, 3] /= UNIT_TO_METRES[conventions.world_unit]
    if conventions.axes == "opengl":
        e = GL_TO_CV @ e  # its own inverse
    if conventions.extrinsics == "camera_to_world":
        e = torch.linalg.inv(e)
    return k, e


def seeing_fraction(k: Tensor, e: Tensor, sizes: Sequence[tuple[int, int]], point: Tensor) -> float:
    """Fraction of cameras with ``point`` [3] in front of them and inside their image."""
    uv, depth = project_points(point.expand(k.shape[0], 1, 3), k, e)
    size = torch.tensor(sizes, dtype=k.dtype)  # [N, 2]
    uv = uv[:, 0]
    inside = (uv >= 0).all(dim=1) & (uv <= size).all(dim=1) & (depth[:, 0] > 0)
    return float(inside.double().mean())


def _subject_point(e: Tensor, head: Tensor | None) -> Tensor:
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
            point = _subject_point(e, head_center)
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


# ----------------------------------------------------------------------------- heads
def head_from_keypoints(points: Mapping[str, Sequence[float]], eye_depth: float) -> HeadPose:
    """Head pose from 3-D keypoints: eyes and nose, ears optional (recommended).

    With ears: the centre is the ears' midpoint, the subject's right axis runs from the left to
    the right ear, and forward points from the ears' midpoint to the eyes' midpoint (the
    Frankfort plane through ears and eyes is close to horizontal for an upright head). Without
    ears: right runs from eye to eye, forward is the nose's offset from the eyes (tilted down
    by the nose's drop), and the centre lies ``eye_depth`` behind the eyes. Forward is made
    orthogonal to right; up completes the frame (forward x up = right, the anchor convention).
    """
    try:
        left, right, nose = (
            torch.tensor(points[name], dtype=torch.float64)
            for name in ("left_eye", "right_eye", "nose")
        )
    except KeyError as error:
        raise CaptureError(
            f"head keypoints need left_eye, right_eye and nose; found {sorted(points)}"
        ) from error
    eyes = (left + right) / 2
    if "left_ear" in points and "right_ear" in points:
        left_ear = torch.tensor(points["left_ear"], dtype=torch.float64)
        right_ear = torch.tensor(points["right_ear"], dtype=torch.float64)
        center = (left_ear + right_ear) / 2
        right_axis = normalize(right_ear - left_ear)
        forward = eyes - center
    else:
        right_axis = normalize(right - left)
        forward = nose - eyes
        center = None
    forward = normalize(forward - (forward @ right_axis) * right_axis)
    up = torch.cross(right_axis, forward, dim=0)
    if center is None:
        center = eyes - eye_depth * forward
    return HeadPose(center, forward, up)


def parse_head(entry: Mapping[str, Any], eye_depth: float) -> HeadPose:
    """One head entry of ``head.json`` (see the module docstring), in the file's unit."""
    if "keypoints" in entry:
        return head_from_keypoints(entry["keypoints"], eye_depth)
    center = torch.tensor(entry["center"], dtype=torch.float64)
    if "rotation" in entry:
        rotation = torch.tensor(entry["rotation"], dtype=torch.float64)  # head -> world
        forward, up = rotation[:, 2], rotation[:, 1]
    else:
        forward = torch.tensor(entry["forward"], dtype=torch.float64)
        up = torch.tensor(entry.get("up", [0.0, 1.0, 0.0]), dtype=torch.float64)
    forward = normalize(forward)
    up = normalize(up - (up @ forward) * forward)
    return HeadPose(center, forward, up)


def read_heads(path: Path, eye_depth: float) -> dict[str, HeadPose]:
    """Head poses per frame ("*" for all frames) from ``head.json``."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise CaptureError("expected a JSON object")
        if any(k in data for k in ("center", "keypoints")):
            return {"*": parse_head(data, eye_depth)}
        return {str(frame): parse_head(entry, eye_depth) for frame, entry in data.items()}
    except CaptureError as error:
        raise CaptureError(f"{path}: {error}") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CaptureError(
            f"{path}: malformed head file: {type(error).__name__}: {error}"
        ) from error


def scale_head(head: HeadPose, metres_per_unit: float) -> HeadPose:
    return HeadPose(head.center * metres_per_unit, head.forward, head.up)


def default_head(rig: Rig) -> HeadPose:
    """A stand-in when no head pose is given: the cameras' pivot, facing the first camera.

    Up is the average of the cameras' up directions (-y rows of R): right for capture domes.
    """
    center = orbit_pivot(rig.extrinsics)
    up = rig_up(rig)
    towards = camera_centers(rig.extrinsics[:1])[0] - center
    forward = normalize(towards - (towards @ up) * up)
    return HeadPose(center, forward, up)


def rig_up(rig: Rig) -> Tensor:
    """The rig's vertical [3]: the mean of the cameras' up directions (-y rows of R).

    Tilts of cameras looking down or up at the subject cancel around a dome.
    """
    return normalize(-rig.extrinsics[:, 1, :3].mean(dim=0))


def canonical_transform(rig: Rig, head: HeadPose) -> Tensor:
    """World -> canonical [4, 4]: origin at the head, +y the rig's up, +z the head's facing
    direction made horizontal (the synthetic studio's axes), so every sample shares one frame."""
    up = rig_up(rig)
    forward = head.forward - (head.forward @ up) * up
    if float(forward.norm()) < 1e-3:  # looking straight up or down: face the first camera
        forward = camera_centers(rig.extrinsics[:1])[0] - head.center
        forward = forward - (forward @ up) * up
    forward = normalize(forward)
    x_axis = torch.cross(up, forward, dim=0)  # the subject's left, as +x in the studio
    rotation = torch.stack([x_axis, up, forward])  # rows: new axes in old coordinates
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = rotation
    transform[:3, 3] = -rotation @ head.center
    return transform


def to_canonical(rig: Rig, head: HeadPose) -> tuple[Rig, HeadPose]:
    """The rig and head expressed in :func:`canonical_transform`'s frame."""
    transform = canonical_transform(rig, head)
    rotation = transform[:3, :3]
    moved = Rig(
        rig.names,
        rig.intrinsics,
        rig.extrinsics @ torch.linalg.inv(transform),  # x_cam = E T^-1 (T x_world)
        rig.distortion,
        rig.sizes,
    )
    return moved, HeadPose(
        torch.zeros(3, dtype=torch.float64), rotation @ head.forward, rotation @ head.up
    )


# ----------------------------------------------------------------------------- images
def image_files(directory: Path, camera: str) -> dict[str, Path]:
    """Frame name -> image path of one camera (``images/<cam>/<frame>.*`` or ``images/<cam>.*``)."""
    images = directory / "images"
    folder = images / camera
    if folder.is_dir():
        return {
            p.stem: p
            for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        }
    single = [images / f"{camera}{s}" for s in IMAGE_SUFFIXES]
    single += [images / f"{camera}{s.upper()}" for s in IMAGE_SUFFIXES]
    found = [p for p in single if p.is_file()]
    return {"0": found[0]} if found else {}


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 image [H, W, 3]; 16-bit, grey and RGBA inputs are converted."""
    import imageio.v3 as iio

    try:
        image = np.asarray(iio.imread(path))
    except Exception as error:  # decoders raise many types
        raise CaptureError(f"{path}: cannot read the image: {error}") from error
    if image.dtype == np.uint16:
        image = (image.astype(np.float64) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float64), 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise CaptureError(f"{path}: expected an RGB image, found shape {list(image.shape)}")
    return np.ascontiguousarray(image[:, :, :3])


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header where possible."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except Exception:
        height, width = read_image(path).shape[:2]
        return width, height
