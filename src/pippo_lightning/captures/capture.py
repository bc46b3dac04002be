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
better, the error names the option that fixes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.cameras import (
    to_homogeneous_extrinsics,
)

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
