"""``pippo-data prepare``: calibrated multi-view captures -> training samples.

For every subject (a capture directory, see :mod:`.capture`) and frame:

1. cameras are read (JSON or KRT), checked against the declared conventions and converted to
   OpenCV world->camera in metres; images are undistorted when distortion is given; with
   ``world="canonical"`` (default) each sample's world is moved rigidly so the head is at the
   origin, +y is the rig's up and +z the head's (horizontal) facing direction: every sample then
   shares one frame (the studio's axes), whatever the capture's calibration frame was;
2. the reference camera is the one most frontal to the head (largest cosine between the head's
   forward direction and the direction from the head to the camera), unless named;
3. every view is cropped (the centred square, or a square of ``head_crop_size`` metres around the
   projected head) and resized to ``resolution``; intrinsics follow the crop and the resize
   exactly; views whose crop does not contain the head are dropped and counted;
4. Plücker rays, spatial-anchor images and the camera-MLP vector are computed from the new
   cameras; a face crop of ``face_size`` metres around the head is cut from the reference image;
5. subjects are split into train / val (never the same subject in both), samples are written
   (``.npy`` or shards) with preview images, all into a staging directory renamed at the end.

Output::

    out/manifest.json                  config, conventions, subjects per split, counts
    out/train/<subject>__<frame>.npy   (or a shard directory)
    out/val/...
    out/previews/<split>/<sample>.png  reference | face | views with anchors; ray directions below
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from pippo_lightning.data.atomic import atomic_directory
from pippo_lightning.data.capture import (
    HEAD_FILE,
    UNIT_TO_METRES,
    CaptureError,
    Conventions,
    HeadPose,
    Rig,
    default_head,
    find_camera_file,
    image_files,
    image_size,
    load_rig,
    read_cameras,
    read_heads,
    read_image,
    scale_head,
    to_canonical,
)
from pippo_lightning.data.npy_io import write_npy_sample
from pippo_lightning.data.preview import write_preview
from pippo_lightning.data.shards import ShardWriter
from pippo_lightning.geometry.anchors import render_spatial_anchor
from pippo_lightning.geometry.cameras import (
    camera_centers,
    camera_pose_vector,
    crop_intrinsics,
    normalize,
    project_points,
    scale_intrinsics,
)
from pippo_lightning.geometry.plucker import plucker_rays
from pippo_lightning.progress import track

log = logging.getLogger(__name__)

FORMAT_NAME = "pippo_lightning.prepared"
FORMAT_VERSION = 1
Crop = Literal["center", "head"]
World = Literal["canonical", "as_is"]
OutputFormat = Literal["npy", "shards"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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


# ----------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropBox:
    """A square in pixel coordinates of the full image (may extend past its borders)."""

    left: int
    top: int
    side: int


def center_box(width: int, height: int) -> CropBox:
    side = min(width, height)
    return CropBox((width - side) // 2, (height - side) // 2, side)


def box_around(uv: Tensor, side: float) -> CropBox:
    """The integer square of about ``side`` pixels centred on ``uv`` [2]."""
    side_px = max(int(round(side)), 1)
    return CropBox(
        int(round(float(uv[0]) - side_px / 2)), int(round(float(uv[1]) - side_px / 2)), side_px
    )


def crop_and_resize(image: np.ndarray, box: CropBox, size: int, pad_value: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] float32 in 0-255, rounded to whole values.

    The box is cut with constant padding where it leaves the image, then resized with area
    averaging (downscaling) or bilinear interpolation (upscaling). Both OpenCV filters map the
    box's edges to the output's edges, which is what :func:`crop_box_intrinsics` assumes.
    """
    height, width = image.shape[:2]
    pads = (
        max(0, -box.top),
        max(0, box.top + box.side - height),
        max(0, -box.left),
        max(0, box.left + box.side - width),
    )
    left, top = box.left, box.top
    if any(pads):
        image = cv2.copyMakeBorder(image, *pads, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
        left, top = left + pads[2], top + pads[0]
    patch = image[top : top + box.side, left : left + box.side].astype(np.float32)
    if box.side != size:
        filt = cv2.INTER_AREA if box.side > size else cv2.INTER_LINEAR
        patch = cv2.resize(patch, (size, size), interpolation=filt)
    # Pixel values are 8-bit: rounding keeps them whole (shards then store them as uint8).
    return np.clip(np.round(patch), 0, 255)


def crop_box_intrinsics(intrinsics: Tensor, box: CropBox, size: int) -> Tensor:
    """K [..., 3, 3] of the ``size`` x ``size`` image made from ``box``."""
    scale = size / box.side
    return scale_intrinsics(crop_intrinsics(intrinsics, box.left, box.top), scale, scale)


# ----------------------------------------------------------------------------- choices
def most_frontal_camera(rig: Rig, head: HeadPose, candidates: Sequence[int]) -> int:
    """Index of the candidate camera that looks at the face most directly."""
    towards = normalize(camera_centers(rig.extrinsics[list(candidates)]) - head.center)
    return candidates[int((towards @ head.forward).argmax())]


def split_subjects(
    subjects: Sequence[str], val_fraction: float, val_subjects: Sequence[str] = ()
) -> dict[str, str]:
    """subject -> "train" | "val", by subject so no subject is in both splits.

    Explicit ``val_subjects`` win; otherwise round(val_fraction * n) subjects (at least one when
    val_fraction > 0 and there are two or more) with the smallest name hashes go to val, so the
    split depends only on the names, not on the order or the machine.
    """
    if val_subjects:
        unknown = set(val_subjects) - set(subjects)
        if unknown:
            raise CaptureError(f"val_subjects not found among the captures: {sorted(unknown)}")
        return {s: ("val" if s in val_subjects else "train") for s in subjects}
    count = round(val_fraction * len(subjects))
    if val_fraction > 0 and len(subjects) >= 2:
        count = max(count, 1)
    ranked = sorted(subjects, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    chosen = set(ranked[:count])
    return {s: ("val" if s in chosen else "train") for s in subjects}


def find_subjects(inputs: Sequence[str | Path]) -> dict[str, Path]:
    """Subject name -> capture directory: each input is a capture or a folder of captures."""
    subjects: dict[str, Path] = {}
    for item in inputs:
        root = Path(item)
        if not root.is_dir():
            raise CaptureError(f"{root}: not a directory")
        found = (
            [root]
            if _has_cameras(root)
            else sorted(d for d in root.iterdir() if d.is_dir() and _has_cameras(d))
        )
        if not found:
            raise CaptureError(
                f"{root}: no capture (a folder with cameras.json or KRT and images/) in it or "
                "its sub-folders"
            )
        for directory in found:
            if directory.name in subjects:
                raise CaptureError(
                    f"two captures named {directory.name!r}: {subjects[directory.name]} and "
                    f"{directory}"
                )
            subjects[directory.name] = directory
    return subjects


def _has_cameras(directory: Path) -> bool:
    try:
        find_camera_file(directory)
    except CaptureError:
        return False
    return True


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


# ----------------------------------------------------------------------------- subjects
def _frames(rig: Rig, directory: Path) -> dict[str, dict[str, Path]]:
    """frame -> {camera -> image path}, for every frame any camera has."""
    frames: dict[str, dict[str, Path]] = {}
    for name in rig.names:
        for frame, path in image_files(directory, name).items():
            frames.setdefault(frame, {})[name] = path
    return dict(sorted(frames.items()))


def _image_sizes(directory: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(width, height) per camera from its first image (KRT files do not state sizes)."""
    sizes = {}
    for name in names:
        files = image_files(directory, name)
        if files:
            sizes[name] = image_size(next(iter(files.values())))
    return sizes


def load_subject(
    directory: Path, config: PrepareConfig, conventions: Conventions | None
) -> tuple[Rig, dict[str, HeadPose], Conventions]:
    """Cameras (checked and converted) and head poses (metres) of one capture."""
    raw = read_cameras(find_camera_file(directory))
    declared = Conventions(**raw.declared) if raw.declared else Conventions()
    conventions = conventions or declared
    unit = UNIT_TO_METRES[conventions.world_unit]
    heads: dict[str, HeadPose] = {}
    if (directory / HEAD_FILE).is_file():
        # Keypoint-derived centres use eye_depth in metres: convert it to the file's unit.
        heads = read_heads(directory / HEAD_FILE, config.eye_depth / unit)
    first_head = next(iter(heads.values())).center if heads else None
    sizes = _image_sizes(directory, raw.names)
    rig = load_rig(directory, conventions, sizes, first_head)
    return rig, {frame: scale_head(h, unit) for frame, h in heads.items()}, conventions


def prepare(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: PrepareConfig | None = None,
    conventions: Conventions | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Turn captures into a dataset at ``out`` (atomically); returns what was done.

    ``conventions`` (when given) override what the cameras files declare.
    """
    config = config or PrepareConfig()
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    subjects = find_subjects(inputs)
    report = PrepareReport(
        subjects=split_subjects(list(subjects), config.val_fraction, config.val_subjects)
    )
    used: dict[str, dict[str, Any]] = {}
    with atomic_directory(out, overwrite=overwrite) as staging:
        writers = _writers(staging, config)
        for subject, directory in track(subjects.items(), "pippo-data prepare", len(subjects)):
            split = report.subjects[subject]
            used[subject] = _prepare_subject(
                subject,
                directory,
                writers[split],
                staging / "previews" / split,
                config,
                conventions,
                report,
            )
        for writer in writers.values():
            writer.close()
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": asdict(config),
            "conventions": used,
            "inputs": {s: str(d.resolve()) for s, d in subjects.items()},
            **asdict(report),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def _prepare_subject(
    subject: str,
    directory: Path,
    writer: _SplitWriter,
    previews: Path,
    config: PrepareConfig,
    conventions: Conventions | None,
    report: PrepareReport,
) -> dict[str, Any]:
    """Write every frame of one subject; returns the conventions used (for the manifest)."""
    rig, heads, used = load_subject(directory, config, conventions)
    split = report.subjects[subject]
    for frame, images in _frames(rig, directory).items():
        report.missing_images += len(rig.names) - len(images)
        head = heads.get(frame) or heads.get("*")
        if head is None:
            if subject not in report.default_heads:
                log.warning(
                    "%s: no head pose; using the cameras' pivot facing the first camera", subject
                )
                report.default_heads.append(subject)
            head = default_head(rig)
        sample = build_sample(rig, images, head, config, report)
        name = f"{_UNSAFE.sub('_', subject)}__{_UNSAFE.sub('_', frame)}"
        if sample is None:
            report.frames_skipped.append(name)
            continue
        sample.update(subject=subject, frame=frame)
        writer(name, sample)
        if len(report.samples[split]) < config.previews:
            write_preview(previews / f"{name}.png", sample)
        report.samples[split].append(name)
    return asdict(used)


class _SplitWriter(Protocol):
    """Receives the samples of one split."""

    def __call__(self, name: str, sample: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class _NpyWriter:
    """Writes one ``.npy`` file per sample into a split directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, sample: dict[str, Any]) -> None:
        write_npy_sample(self.directory / f"{name}.npy", sample)

    def close(self) -> None:
        pass


class _ShardSplitWriter:
    """Packs the samples of one split into a shard directory."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.writer = ShardWriter(directory, shard_size=shard_size)

    def __call__(self, name: str, sample: dict[str, Any]) -> None:
        self.writer.add(name, sample)

    def close(self) -> None:
        self.writer.close()


def _writers(staging: Path, config: PrepareConfig) -> dict[str, _SplitWriter]:
    if config.format == "shards":
        return {s: _ShardSplitWriter(staging / s, config.shard_size) for s in ("train", "val")}
    return {s: _NpyWriter(staging / s) for s in ("train", "val")}
