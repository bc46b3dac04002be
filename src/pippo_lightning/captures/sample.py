"""One prepared sample from one subject's views: crops, pixels, cameras in the canonical frame,
Plücker rays and spatial anchors, as the schema wants them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from pippo_lightning.captures.capture import (
    CaptureError,
    HeadPose,
    Rig,
)
from pippo_lightning.captures.crops import (
    box_around,
    center_box,
    crop_and_resize,
    crop_box_intrinsics,
)
from pippo_lightning.captures.heads import (
    read_image,
    to_canonical,
)
from pippo_lightning.captures.subjects import most_frontal_camera
from pippo_lightning.geometry.anchors import render_spatial_anchor
from pippo_lightning.geometry.cameras import (
    camera_pose_vector,
    project_points,
)
from pippo_lightning.geometry.plucker import plucker_rays

log = logging.getLogger(__name__)


Crop = Literal["center", "head"]


World = Literal["canonical", "as_is"]


OutputFormat = Literal["npy", "shards"]


UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PrepareConfig:
    """What ``prepare`` produces. Sizes in metres (the world is converted to metres first)."""

    resolution: int = 512
    world: World = "canonical"  # per sample: head at the origin, +y up, facing +z
    crop: Crop = "center"
    head_crop_size: float = 1.0  # side of the square crop around the head (crop="head")
    face_resolution: int = 128  # 0: no face crop
    face_size: float = 0.35  # side of the face crop around the head
    anchor_centre_radius: float = 0.06  # the synthetic studio's anchor sizes
    anchor_axis_length: float = 0.3
    anchor_axis_radius: float = 0.03
    anchor_supersample: int = 2
    reference: str | None = None  # camera name; None: the most frontal camera
    ref_in_targets: bool = False
    val_fraction: float = 0.1
    val_subjects: tuple[str, ...] = ()
    min_views: int = 2
    undistort: bool = True
    eye_depth: float = 0.09  # head centre behind the eyes when keypoints lack ears
    previews: int = 4  # preview images per split
    format: OutputFormat = "npy"
    shard_size: int = 256
    pad_value: int = 0  # colour of pixels a crop takes from outside the image

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_subjects", tuple(self.val_subjects))
        if self.resolution < 8 or self.crop not in ("center", "head"):
            raise CaptureError(f"resolution must be >= 8 and crop center|head: {self}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise CaptureError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.world not in ("canonical", "as_is"):
            raise CaptureError(f"world must be canonical or as_is, got {self.world!r}")
        if self.format not in ("npy", "shards"):
            raise CaptureError(f"format must be npy or shards, got {self.format!r}")


@dataclass
class PrepareReport:
    """Counts of what ``prepare`` did (also stored in the manifest)."""

    samples: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "val": []})
    subjects: dict[str, str] = field(default_factory=dict)  # subject -> split
    views_dropped: int = 0  # head outside the crop or behind the camera
    frames_skipped: list[str] = field(default_factory=list)
    missing_images: int = 0
    default_heads: list[str] = field(default_factory=list)  # subjects without head poses


# ----------------------------------------------------------------------------- one sample
@dataclass
class _View:
    """One camera's processed view."""

    name: str
    image: np.ndarray  # [R, R, 3] float32, 0-255
    intrinsics: Tensor  # [3, 3] float64, output pixels
    extrinsics: Tensor  # [4, 4] float64


def _process_view(
    rig: Rig, index: int, path: Path, head: HeadPose, config: PrepareConfig
) -> tuple[_View | None, np.ndarray, str]:
    """Crop/resize one camera's image; (None, image, reason) when the head is not in the crop."""
    name = rig.names[index]
    image = read_image(path)
    height, width = image.shape[:2]
    if rig.sizes[index] != (width, height):
        raise CaptureError(
            f"{path}: image is {width}x{height} but camera {name!r} is calibrated for "
            f"{rig.sizes[index][0]}x{rig.sizes[index][1]}"
        )
    k, e = rig.intrinsics[index], rig.extrinsics[index]
    dist = rig.distortion[index]
    if config.undistort and bool((dist != 0).any()):
        # Undistorting onto the same K keeps the pinhole model of everything downstream exact.
        image = cv2.undistort(image, k.numpy(), dist.numpy())
    uv, depth = project_points(head.center[None], k, e)
    if float(depth[0]) <= 0:
        return None, image, "head behind the camera"
    if config.crop == "head":
        focal = float(k[0, 0] + k[1, 1]) / 2
        box = box_around(uv[0], focal * config.head_crop_size / float(depth[0]))
    else:
        box = center_box(width, height)
    k_out = crop_box_intrinsics(k, box, config.resolution)
    uv_out, _ = project_points(head.center[None], k_out, e)
    if not bool(((uv_out >= 0) & (uv_out <= config.resolution)).all()):
        return None, image, "head outside the crop"
    pixels = crop_and_resize(image, box, config.resolution, config.pad_value)
    return _View(name, pixels, k_out, e), image, ""


def _face_crop(
    image: np.ndarray, k: Tensor, e: Tensor, head: HeadPose, config: PrepareConfig
) -> tuple[np.ndarray, Tensor] | None:
    """The face crop of the (full, undistorted) reference image and its intrinsics."""
    uv, depth = project_points(head.center[None], k, e)
    if config.face_resolution <= 0 or float(depth[0]) <= 0:
        return None
    focal = float(k[0, 0] + k[1, 1]) / 2
    box = box_around(uv[0], focal * config.face_size / float(depth[0]))
    pixels = crop_and_resize(image, box, config.face_resolution, config.pad_value)
    return pixels, crop_box_intrinsics(k, box, config.face_resolution)


def _pixels(images: Sequence[np.ndarray]) -> Tensor:
    """[N, R, R, 3] float 0-255 -> [N, 1, 3, R, R] float32 (the schema's frame axis T = 1)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)[:, None].float().contiguous()


def _geometry(views: Sequence[_View], head: HeadPose, config: PrepareConfig) -> dict[str, Tensor]:
    """Cameras, rays, anchors and camera-MLP vectors of ``views`` at the output resolution."""
    size = config.resolution
    k = torch.stack([v.intrinsics for v in views])  # [N, 3, 3] float64
    e = torch.stack([v.extrinsics for v in views])  # [N, 4, 4]
    anchors = render_spatial_anchor(
        head.center,
        head.forward,
        head.up,
        k,
        e,
        size,
        size,
        centre_radius=config.anchor_centre_radius,
        axis_length=config.anchor_axis_length,
        axis_radius=config.anchor_axis_radius,
        supersample=config.anchor_supersample,
    )  # [N, 3, R, R] in [0, 1]
    return {
        "intrinsics": k.float(),
        "extrinsics": e.float(),
        "plucker": plucker_rays(k, e, size, size).float()[:, None],  # [N, 1, 6, R, R]
        "kpts": (anchors * 255.0).round().float()[:, None],  # [N, 1, 3, R, R]
        "cam_pose": camera_pose_vector(k, e, size, size).float()[:, None],  # [N, 1, 16]
    }


def build_sample(
    rig: Rig,
    frame_images: dict[str, Path],
    head: HeadPose,
    config: PrepareConfig,
    report: PrepareReport,
) -> dict[str, Any] | None:
    """One sample (schema layout) from one frame's images; None when too few views remain."""
    if config.world == "canonical":
        rig, head = to_canonical(rig, head)
    available = [i for i, name in enumerate(rig.names) if name in frame_images]
    if config.reference is not None:
        ref_index = rig.index(config.reference)
        if ref_index not in available:
            raise CaptureError(f"reference camera {config.reference!r} has no image")
    else:
        ref_index = most_frontal_camera(rig, head, available)
    ref_view, ref_full, reason = _process_view(
        rig, ref_index, frame_images[rig.names[ref_index]], head, config
    )
    if ref_view is None:
        raise CaptureError(f"reference camera {rig.names[ref_index]!r}: {reason}")
    targets = [i for i in available if config.ref_in_targets or i != ref_index]
    views = []
    for index in targets:
        view = ref_view if index == ref_index else None
        if view is None:
            view, _, reason = _process_view(
                rig, index, frame_images[rig.names[index]], head, config
            )
        if view is None:
            log.info("dropping view %s: %s", rig.names[index], reason)
            report.views_dropped += 1
            continue
        views.append(view)
    if len(views) < config.min_views:
        return None
    geometry = _geometry(views, head, config)
    ref = _geometry([ref_view], head, config)
    sample: dict[str, Any] = {
        "image": _pixels([v.image for v in views]),
        "ref_image": _pixels([ref_view.image]),
        "cam_pose": geometry["cam_pose"],
        "ref_cam_pose": ref["cam_pose"],
        "plucker": geometry["plucker"],
        "ref_plucker": ref["plucker"],
        "kpts": geometry["kpts"],
        "ref_kpts": ref["kpts"],
        "cam_intrin": geometry["intrinsics"],
        "cam_extrin": geometry["extrinsics"],
        "ref_cam_intrin": ref["intrinsics"],
        "ref_cam_extrin": ref["extrinsics"],
        "head_center": head.center.float(),
        "head_forward": head.forward.float(),
        "head_up": head.up.float(),
        "camera_names": [v.name for v in views],
        "ref_camera": ref_view.name,
        "world_unit": "m",
    }
    face = _face_crop(ref_full, rig.intrinsics[ref_index], rig.extrinsics[ref_index], head, config)
    if face is not None:
        sample["face_image"] = _pixels([face[0]])
        sample["face_cam_intrin"] = face[1].float()[None]
        sample["face_cam_extrin"] = rig.extrinsics[ref_index].float()[None]
    return sample
