"""The per-sample schema (the original Pippo layout) and its structural validation.

One *sample* is one subject at one instant seen by NV calibrated cameras plus a reference camera.
On disk it is either an ``.npy`` file (``np.save`` of a dict, the original release's format; see
:mod:`.npy_io`) or one entry of a shard directory (:mod:`.shards`); both hold the same keys.

Keys (T is the original's frame axis and must be 1; symbols must agree across keys):

==================  =====================  ============  ==============================================
key                 shape                  dtype         meaning
==================  =====================  ============  ==============================================
image (or video)    [NV, 1, 3, H, W]       float, uint8  target views, RGB values in [0, 255]
ref_image           [1, 1, 3, RH, RW]      float, uint8  the reference (input) view, [0, 255]
cam_pose            [NV, 1, 16]            float         camera MLP input per view (layout below)
ref_cam_pose        [1, 1, 16]             float         same for the reference camera
kpts                [NV, 1, 3, H, W]       float, uint8  spatial-anchor images, [0, 255] on black
ref_kpts            [1, 1, 3, RH, RW]      float, uint8  spatial anchor seen by the reference camera
cam_intrin          [NV, 3, 3|4]           float         intrinsics K, pixels of the stored image
cam_extrin          [NV, 3|4, 4]           float         world->camera [R | t] (OpenCV axes)
ref_cam_intrin (*)  [1, 3, 3|4]            float         reference intrinsics
ref_cam_extrin (*)  [1, 3|4, 4]            float         reference world->camera
plucker (opt.)      [NV, 1, 6, H, W]       float         per-pixel ray (d, o x d), d unit, world
ref_plucker (opt.)  [1, 1, 6, RH, RW]      float         reference rays
head_center (opt.)  [3]                    float         world position of the head centre
head_forward (opt.) [3]                    float         unit facing direction of the head (world)
head_up (opt.)      [3]                    float         unit up direction of the head (world)
face_image (opt.)   [1, 1, 3, FH, FW]      float, uint8  face crop of the reference camera, [0, 255]
face_cam_intrin     [1, 3, 3]              float         intrinsics of the face crop (pixels)
face_cam_extrin     [1, 4, 4]              float         its world->camera (the reference camera's)
==================  =====================  ============  ==============================================

(*) The original release's files are not known to carry reference intrinsics/extrinsics (its
model reads only ``ref_cam_pose``). When they are missing, they are decoded from ``ref_cam_pose``
if that holds a camera in the layout below (orthonormal rotation, positive focal lengths).
Otherwise training stands in the *target view whose* ``cam_pose`` *is nearest* ``ref_cam_pose``
(exact when the reference photo was taken by one of the target cameras, as in a capture dome),
its intrinsics scaled to the reference image, and validation reports a warning saying so
(:func:`reference_camera_problem`, :func:`with_reference_camera`). The model's own camera input
stays the file's ``ref_cam_pose``; the stand-in only sets the views' azimuths relative to the
reference (view sampling, the guidance ramp) and the recomputed ``ref_plucker``.

Metadata keys (optional, not tensors): ``subject`` (str), ``frame`` (str), ``camera_names``
(list[str], one per target view), ``ref_camera`` (str), ``world_unit`` (str, "m").

Camera convention (shared with :mod:`pippo_lightning.geometry.cameras`):

- OpenCV camera axes: x right, y down, z forward (the viewing direction);
- extrinsics map world to camera, ``x_cam = R @ x_world + t``; R is a proper rotation;
- intrinsics are in pixels *of the stored image*; pixel (row i, column j) has its centre at
  (u, v) = (j + 0.5, i + 0.5), so resizing by s scales K's first two rows by s exactly;
- the world is metric (metres) when produced by ``pippo-data prepare`` or the synthetic studio.

``cam_pose`` = the 12 entries of world->camera ``[R | t]`` row-major, then fx/W, fy/H, cx/W, cy/H
(:func:`pippo_lightning.geometry.cameras.camera_pose_vector`).

:func:`validate_sample` lists *every* structural problem (missing keys, shapes, dtypes, non-finite
numbers, values outside [0, 255]); :func:`check_sample` raises them as one :class:`SampleError`.
Geometric checks (rotations, intrinsics, visibility of the head) live in :mod:`.validate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pippo_lightning.errors import PippoError

Dim = int | str
Shape = tuple[Dim, ...]
Severity = Literal["error", "warning"]

#: Value range of pixel-valued keys (images and anchors).
PIXEL_RANGE: tuple[float, float] = (0.0, 255.0)


class SampleError(PippoError, ValueError):
    """A sample file does not match the schema; the message names the file and the key."""


@dataclass(frozen=True)
class KeySpec:
    """Accepted shapes (alternatives; symbols must agree across keys) and value kind."""

    shapes: tuple[Shape, ...]
    pixels: bool = False  # 0-255 images: uint8 allowed besides floating point, range checked
    required: bool = True
    description: str = ""


SAMPLE_KEYS: dict[str, KeySpec] = {
    "image": KeySpec((("NV", 1, 3, "H", "W"),), pixels=True, description="target views, 0-255"),
    "ref_image": KeySpec(
        ((1, 1, 3, "RH", "RW"),), pixels=True, description="reference view, 0-255"
    ),
    "cam_pose": KeySpec((("NV", 1, 16),), description="camera MLP input per view"),
    "ref_cam_pose": KeySpec(((1, 1, 16),), description="camera MLP input, reference"),
    "kpts": KeySpec((("NV", 1, 3, "H", "W"),), pixels=True, description="spatial anchor, 0-255"),
    "ref_kpts": KeySpec(((1, 1, 3, "RH", "RW"),), pixels=True, description="anchor, reference"),
    "cam_intrin": KeySpec((("NV", 3, 3), ("NV", 3, 4)), description="intrinsics, pixels"),
    "cam_extrin": KeySpec((("NV", 4, 4), ("NV", 3, 4)), description="world->camera"),
    "ref_cam_intrin": KeySpec(
        ((1, 3, 3), (1, 3, 4)), required=False, description="reference intrinsics"
    ),
    "ref_cam_extrin": KeySpec(
        ((1, 4, 4), (1, 3, 4)), required=False, description="reference world->camera"
    ),
    "plucker": KeySpec(
        (("NV", 1, 6, "H", "W"),), required=False, description="(d, o x d) per pixel"
    ),
    "ref_plucker": KeySpec(((1, 1, 6, "RH", "RW"),), required=False, description="reference rays"),
    "head_center": KeySpec(((3,),), required=False, description="world position of the head"),
    "head_forward": KeySpec(((3,),), required=False, description="world facing direction"),
    "head_up": KeySpec(((3,),), required=False, description="world up direction of the head"),
    "face_image": KeySpec(
        ((1, 1, 3, "FH", "FW"),), pixels=True, required=False, description="face crop, 0-255"
    ),
    "face_cam_intrin": KeySpec(((1, 3, 3),), required=False, description="face crop intrinsics"),
    "face_cam_extrin": KeySpec(((1, 4, 4),), required=False, description="face crop extrinsics"),
}

#: Non-tensor entries ``prepare`` writes; validated for type only.
METADATA_KEYS: dict[str, type] = {
    "subject": str,
    "frame": str,
    "camera_names": list,
    "ref_camera": str,
    "world_unit": str,
}

#: Older files call the target views "video".
KEY_ALIASES: dict[str, str] = {"video": "image"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: where, which key (None: the file itself), what."""

    path: str
    key: str | None
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.path}: key {self.key!r}" if self.key else self.path
        return f"{where}: {self.message}"


def canonical_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Apply key aliases and turn numpy arrays into tensors (other values pass through)."""
    sample = {k: (_numeric_tensor(v) if isinstance(v, np.ndarray) else v) for k, v in raw.items()}
    for alias, key in KEY_ALIASES.items():
        if key not in sample and alias in sample:
            sample[key] = sample.pop(alias)
    return sample


def _numeric_tensor(array: np.ndarray) -> Any:
    """Numeric arrays become tensors; anything else (strings, objects) is left alone."""
    if array.dtype.kind in "biuf" and array.dtype.byteorder in "=|":
        return torch.from_numpy(np.ascontiguousarray(array))
    if array.dtype.kind in "biuf":  # big-endian data from another machine: convert first
        return torch.from_numpy(array.astype(array.dtype.newbyteorder("=")))
    return array


def check_sample(
    sample: Mapping[str, Any], path: str | Path, required: tuple[str, ...] = ()
) -> None:
    """Raise :class:`SampleError` listing every structural problem of ``sample`` (if any).

    ``sample`` should be :func:`canonical_sample`'d; ``required`` adds keys to the required set.
    """
    problems = [p for p in validate_sample(sample, path, required) if p.severity == "error"]
    if problems:
        raise SampleError("; ".join(str(p) for p in problems))


def validate_sample(
    sample: Mapping[str, Any], path: str | Path, required: tuple[str, ...] = ()
) -> list[Problem]:
    """Every structural problem of a canonical sample: keys, shapes, dtypes, finiteness, ranges.

    Never raises on bad values: a wrong type or shape is one more :class:`Problem`.
    """
    path = str(path)
    problems: list[Problem] = []
    sizes: dict[str, int] = {}
    for key, spec in SAMPLE_KEYS.items():
        if key not in sample:
            if spec.required or key in required:
                aliases = [a for a, k in KEY_ALIASES.items() if k == key]
                also = f" (or {', '.join(repr(a) for a in aliases)})" if aliases else ""
                problems.append(
                    Problem(
                        path,
                        None,
                        f"missing key {key!r}{also} ({spec.description}); "
                        f"found keys {sorted(map(str, sample))}",
                    )
                )
            continue
        problems += [Problem(path, key, m) for m in _value_problems(sample[key], spec, sizes)]
    reference = reference_camera_problem(sample, path)
    if reference is not None:
        problems.append(reference)
    for key, kind in METADATA_KEYS.items():
        if key in sample and not isinstance(sample[key], kind):
            problems.append(
                Problem(
                    path,
                    key,
                    f"expected {kind.__name__}, found {type(sample[key]).__name__}",
                    "warning",
                )
            )
    return problems


def derive_reference_camera(sample: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(K [1, 3, 3], E [1, 4, 4]) decoded from ``ref_cam_pose``, or None if it holds no camera."""
    from pippo_lightning.geometry.cameras import camera_from_pose_vector

    pose, image = sample.get("ref_cam_pose"), sample.get("ref_image")
    if not isinstance(pose, torch.Tensor | np.ndarray) or not hasattr(image, "shape"):
        return None
    pose = torch.as_tensor(pose)
    if tuple(pose.shape) != (1, 1, 16) or not pose.is_floating_point() or len(image.shape) < 2:
        return None
    height, width = image.shape[-2:]
    k, e = camera_from_pose_vector(pose[:, 0].double(), width, height)
    rotation = e[0, :3, :3]
    orthonormal = (rotation @ rotation.T - torch.eye(3, dtype=rotation.dtype)).abs().max() < 1e-3
    if not bool(orthonormal) or not bool(torch.isfinite(k).all()) or float(k[0, 0, 0]) <= 0:
        return None
    return k.float(), e.float()


def nearest_target_camera(
    sample: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, int, float] | None:
    """The fallback reference camera: (K [1, 3, 3] in pixels of ``ref_image``, E [1, 4, 4],
    view index, cam_pose distance) of the target view whose ``cam_pose`` is nearest
    ``ref_cam_pose``; None if those keys are unusable.

    Both pose vectors come from one encoding whatever its layout, so the reference camera's own
    view (when it is one of the targets) is found at distance 0 even where ``ref_cam_pose``
    does not decode in this package's layout.
    """
    from pippo_lightning.geometry.cameras import scale_intrinsics, to_homogeneous_extrinsics

    keys = ("ref_cam_pose", "cam_pose", "cam_intrin", "cam_extrin", "image", "ref_image")
    if not all(isinstance(sample.get(k), torch.Tensor | np.ndarray) for k in keys):
        return None
    pose, poses = torch.as_tensor(sample["ref_cam_pose"]), torch.as_tensor(sample["cam_pose"])
    intrinsics, extrinsics = (torch.as_tensor(sample[k]) for k in ("cam_intrin", "cam_extrin"))
    views = poses.shape[0] if poses.ndim == 3 else 0
    shapes_ok = (
        tuple(pose.shape) == (1, 1, 16)
        and tuple(poses.shape) == (views, 1, 16)
        and views > 0
        and intrinsics.shape[0] == extrinsics.shape[0] == views
        and intrinsics.shape[-2:] in ((3, 3), (3, 4))
        and extrinsics.shape[-2:] in ((3, 4), (4, 4))
        and len(sample["image"].shape) >= 2
        and len(sample["ref_image"].shape) >= 2
    )
    if not shapes_ok or not (pose.is_floating_point() and poses.is_floating_point()):
        return None
    distance = (poses[:, 0].double() - pose[0].double()).norm(dim=-1)  # [NV]
    if not bool(torch.isfinite(distance).all()):
        return None
    view = int(distance.argmin())
    height, width = sample["image"].shape[-2:]
    ref_height, ref_width = sample["ref_image"].shape[-2:]
    k = intrinsics[view : view + 1, :, :3].float()  # [1, 3, 3], pixels of the target image
    k = scale_intrinsics(k, ref_width / width, ref_height / height)
    e = to_homogeneous_extrinsics(extrinsics[view : view + 1].float())  # [1, 4, 4]
    return k, e, view, float(distance[view])


def reference_camera_problem(sample: Mapping[str, Any], path: str | Path) -> Problem | None:
    """What a sample without a usable reference camera gets: None when the file has one or
    ``ref_cam_pose`` decodes to one; a warning naming the stand-in training uses otherwise; an
    error when not even the stand-in can be found."""
    reference = ("ref_cam_intrin", "ref_cam_extrin")
    missing = [key for key in reference if key not in sample]
    if not missing or derive_reference_camera(sample) is not None:
        return None
    stand_in = nearest_target_camera(sample)
    what = (
        f"no reference camera: missing key {' and '.join(repr(k) for k in missing)}, and "
        "'ref_cam_pose' does not decode to one (expected [R|t] row-major with R orthonormal, "
        "fx/W, fy/H, cx/W, cy/H)"
    )
    if stand_in is None:
        return Problem(str(path), missing[0], f"{what}, and no target camera can stand in")
    _, _, view, distance = stand_in
    return Problem(
        str(path),
        missing[0],
        f"{what}; training stands in target view {view}, the one whose 'cam_pose' is nearest "
        f"'ref_cam_pose' (distance {distance:.3g}; 0: the reference is that camera): it sets the "
        "views' azimuths relative to the reference (view sampling, guidance ramp) and the "
        "recomputed 'ref_plucker'; the model's camera input stays 'ref_cam_pose'",
        "warning",
    )


def with_reference_camera(sample: dict[str, Any], fallback: bool = True) -> dict[str, Any]:
    """``sample`` with ``ref_cam_intrin`` / ``ref_cam_extrin`` filled in when they are missing
    (files of the original release): decoded from ``ref_cam_pose``, else (with ``fallback``)
    the nearest target camera (:func:`nearest_target_camera`); unchanged otherwise."""
    if "ref_cam_intrin" in sample and "ref_cam_extrin" in sample:
        return sample
    derived = derive_reference_camera(sample)
    if derived is None and fallback:
        stand_in = nearest_target_camera(sample)
        derived = stand_in[:2] if stand_in is not None else None
    if derived is None:
        return sample
    k, e = derived
    return {"ref_cam_intrin": k, "ref_cam_extrin": e, **sample}


def _value_problems(value: Any, spec: KeySpec, sizes: dict[str, int]) -> list[str]:
    """What is wrong with one value: type, shape, dtype, non-finite entries, range."""
    if not isinstance(value, torch.Tensor | np.ndarray):
        return [f"expected a tensor or array, found {type(value).__name__}"]
    tensor = torch.as_tensor(value) if isinstance(value, torch.Tensor) else None
    if tensor is None:
        if value.dtype.kind not in "biuf":
            return [f"expected a numeric array, found dtype {value.dtype}"]
        tensor = _numeric_tensor(value)
    messages = []
    shape = tuple(tensor.shape)
    if not any(_bind(pattern, shape, sizes) for pattern in spec.shapes):
        expected = " or ".join(_describe(pattern, sizes) for pattern in spec.shapes)
        messages.append(f"expected shape {expected}, found {list(shape)}")
    allowed = "floating point or uint8" if spec.pixels else "floating point"
    if not (tensor.is_floating_point() or (spec.pixels and tensor.dtype == torch.uint8)):
        messages.append(f"expected dtype {allowed}, found {tensor.dtype}")
        return messages
    if tensor.is_floating_point():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            messages.append(f"{bad} non-finite values (nan/inf) of {tensor.numel()}")
            return messages
    if spec.pixels and tensor.numel():
        messages += _range_problems(tensor)
    return messages


def _range_problems(pixels: torch.Tensor) -> list[str]:
    """Pixel values must lie in [0, 255]; common mistakes ([-1, 1], [0, 1]) are named."""
    low, high = float(pixels.min()), float(pixels.max())
    if low >= PIXEL_RANGE[0] and high <= PIXEL_RANGE[1]:
        return []
    hint = ""
    if low >= -1.0 and high <= 1.0:
        hint = " (looks like [-1, 1]: store (x + 1) * 127.5)"
    return [f"expected values in [0, 255], found [{low:.4g}, {high:.4g}]{hint}"]


def _bind(pattern: Shape, shape: tuple[int, ...], sizes: dict[str, int]) -> bool:
    """Match ``shape`` against ``pattern``; on success record new symbol sizes in ``sizes``."""
    if len(pattern) != len(shape):
        return False
    new: dict[str, int] = {}
    for dim, size in zip(pattern, shape):
        if isinstance(dim, int):
            if dim != size:
                return False
        elif sizes.get(dim, new.get(dim, size)) != size:
            return False
        else:
            new[dim] = size
    sizes.update(new)
    return True


def _describe(pattern: Shape, sizes: dict[str, int]) -> str:
    """e.g. ``[NV=24, 1, 3, H=64, W=64]`` (symbols shown with the sizes fixed by earlier keys)."""
    parts = [f"{d}={sizes[d]}" if isinstance(d, str) and d in sizes else str(d) for d in pattern]
    return f"[{', '.join(parts)}]"
