"""Head poses of a capture (keypoints or a head file) and the canonical frame they define; the
capture's images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.captures.capture import IMAGE_SUFFIXES, CaptureError, HeadPose, Rig
from pippo_lightning.geometry.cameras import (
    camera_centers,
    normalize,
    orbit_pivot,
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
