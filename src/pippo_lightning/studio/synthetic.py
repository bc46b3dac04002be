"""The synthetic studio: procedurally generated people captured by a camera dome, on disk.

Every subject is rendered from all dome cameras plus one reference camera and saved as one
``.npy`` file in the original per-sample layout (a pickled dict of torch tensors, see
:mod:`pippo_lightning.data.schema`). A dataset directory looks like::

    out_dir/manifest.json      format, version, config, file lists, subject seeds
    out_dir/train/subject_00000.npy ...
    out_dir/val/subject_00000.npy ...

Seeds: subject i of a split gets ``(config.seed << 32) + 2 * i + split_bit`` with split_bit 0 for
train and 1 for val, so train seeds are even and validation seeds odd: the splits can never share
a subject. Each subject seed drives numpy's PCG64 (see :meth:`SubjectParams.sample`).

Generation is atomic: files are written into a hidden sibling directory that is renamed to
``out_dir`` only once complete. An existing ``out_dir`` whose manifest matches the config is reused;
one that does not match raises :class:`StudioMismatchError` (nothing is overwritten).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.geometry.anchors import render_spatial_anchor
from pippo_lightning.geometry.cameras import (
    WORLD_UP,
    camera_pose_vector,
    dome_cameras,
    intrinsics_from_fov,
    look_at,
)
from pippo_lightning.geometry.plucker import plucker_rays
from pippo_lightning.progress import track
from pippo_lightning.studio.render import render_scene
from pippo_lightning.studio.scene import Lighting
from pippo_lightning.studio.subject import Subject, SubjectParams, build_subject

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SPLITS",
    "StudioConfig",
    "StudioMismatchError",
    "SubjectParams",
    "generate_studio",
    "render_subject_sample",
    "studio_cameras",
    "subject_seed",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "pippo_lightning.synthetic_studio"
FORMAT_VERSION = 2  # 2: clothing prints (grain, hashed checks/stripes)
SPLITS: tuple[str, ...] = ("train", "val")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StudioConfig:
    """What to generate. Distances in metres; the dome looks at (0, target_height, 0).

    rings: (elevation_deg, camera_count) per ring; the rings are staggered in azimuth.
    The reference camera is frontal (azimuth 0), at the subject's head height, ``ref_radius`` from
    the vertical axis and looking at the dome target: close to, but not one of, the dome views.
    supersample: rays per pixel side (2 anti-aliases at ~3x the render time).
    head_target_offset: None (default) keeps the dome on the fixed point (0, target_height, 0):
        a full-body framing in which a person spans about a quarter of the image width. A number
        re-aims the dome and the reference at each subject's own head height plus this offset
        (metres): with a narrow ``fov_deg`` / ``ref_fov_deg`` a head-and-shoulders framing, as in
        Pippo's data, whose person fills most of the image (more texture for the matcher, a lower
        reprojection floor at small sizes). ``target_height`` is then unused.
    """

    num_train_subjects: int = 48
    num_val_subjects: int = 8
    resolution: int = 64
    rings: tuple[tuple[float, int], ...] = ((-15.0, 8), (10.0, 8), (35.0, 8))
    radius: float = 3.2
    fov_deg: float = 36.0
    target_height: float = 0.95
    ref_radius: float = 2.8
    ref_fov_deg: float = 40.0
    max_body_yaw_deg: float = 15.0
    background: tuple[float, float, float] = (0.85, 0.85, 0.85)
    supersample: int = 1
    seed: int = 0
    head_target_offset: float | None = None

    def __post_init__(self) -> None:
        # Hydra/JSON hand over lists; store tuples so configs compare and hash by value.
        rings = tuple((float(e), int(c)) for e, c in self.rings)
        object.__setattr__(self, "rings", rings)
        object.__setattr__(self, "background", tuple(float(c) for c in self.background))
        if self.seed < 0 or self.num_train_subjects < 0 or self.num_val_subjects < 0:
            raise ValueError(f"StudioConfig: seed and subject counts must be >= 0, got {self}")
        if not rings or self.resolution < 1 or self.supersample < 1:
            raise ValueError(f"StudioConfig: need rings, resolution >= 1, supersample >= 1: {self}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudioConfig:
        """Build from a plain mapping (e.g. a Hydra node); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"StudioConfig: unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(values))

    def generate(self, root: str | Path) -> Path:
        """The data module's hook (a ``SampleGenerator``): :func:`generate_studio` into ``root``."""
        return generate_studio(self, root)

    def is_generated(self, root: str | Path) -> bool:
        """Whether ``root`` holds a finished studio (its manifest is written last)."""
        return (Path(root) / MANIFEST).is_file()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples become lists), as stored in the manifest.

        ``head_target_offset`` appears only when set, so studios generated before it existed
        (full-body framing) keep matching their manifests and cache directories.
        """
        values = json.loads(json.dumps(asdict(self)))
        if values["head_target_offset"] is None:
            del values["head_target_offset"]
        return values

    @property
    def num_views(self) -> int:
        return sum(count for _, count in self.rings)


class StudioMismatchError(ValueError):
    """``out_dir`` holds something other than the studio this config describes."""


def subject_seed(config_seed: int, split: str, index: int) -> int:
    """Seed of subject ``index`` in ``split``: even for train, odd for val (never shared)."""
    return (config_seed << 32) + 2 * index + SPLITS.index(split)


def studio_cameras(config: StudioConfig, head_height: float) -> dict[str, Tensor]:
    """Dome and reference cameras: K/E for the dome ([N, 3, 3], [N, 4, 4]) and the ref ([1, ...])."""
    res = config.resolution
    if config.head_target_offset is None:
        target = (0.0, config.target_height, 0.0)
    else:  # head-and-shoulders framing: every subject centred at its own head height
        target = (0.0, head_height + config.head_target_offset, 0.0)
    k, e, azimuth, elevation = dome_cameras(
        config.rings, config.radius, target, config.fov_deg, res, res
    )
    ref_eye = torch.tensor([0.0, head_height, config.ref_radius])
    ref_e = look_at(ref_eye, torch.tensor(target), WORLD_UP)[None]
    ref_k = intrinsics_from_fov(config.ref_fov_deg, res, res)[None]
    return {
        "intrinsics": k,
        "extrinsics": e,
        "azimuth_deg": azimuth,
        "elevation_deg": elevation,
        "ref_intrinsics": ref_k,
        "ref_extrinsics": ref_e,
    }


def render_subject_sample(params: SubjectParams, config: StudioConfig) -> dict[str, Any]:
    """Render one subject from every dome camera and the reference camera, in the file layout."""
    subject = build_subject(params)
    cams = studio_cameras(config, head_height=float(subject.head_center[1]))
    k = torch.cat([cams["intrinsics"], cams["ref_intrinsics"]])  # [N + 1, 3, 3], ref last
    e = torch.cat([cams["extrinsics"], cams["ref_extrinsics"]])  # [N + 1, 4, 4]
    res, ss = config.resolution, config.supersample
    render = render_scene(
        subject.scene,
        k,
        e,
        res,
        res,
        background=config.background,
        lighting=Lighting(),
        supersample=ss,
    )
    images = (render.rgb * 255.0).round()  # [N + 1, 3, H, W]: 8-bit values, like photographs
    anchors = _anchor_images(subject, k, e, res, ss)
    plucker = plucker_rays(k, e, res, res)  # [N + 1, 6, H, W]
    pose = camera_pose_vector(k, e, res, res)  # [N + 1, 16]

    def split(x: Tensor) -> tuple[Tensor, Tensor]:
        """(dome views [N, 1, ...], reference [1, 1, ...]) with the original's frame axis T = 1."""
        return x[:-1, None].contiguous(), x[-1:, None].contiguous()

    image, ref_image = split(images)
    kpts, ref_kpts = split(anchors)
    plucker_views, ref_plucker = split(plucker)
    cam_pose, ref_cam_pose = split(pose)
    return {
        "image": image,
        "ref_image": ref_image,
        "cam_pose": cam_pose,
        "ref_cam_pose": ref_cam_pose,
        "plucker": plucker_views,
        "ref_plucker": ref_plucker,
        "kpts": kpts,
        "ref_kpts": ref_kpts,
        "cam_intrin": cams["intrinsics"],
        "cam_extrin": cams["extrinsics"],
        "ref_cam_intrin": cams["ref_intrinsics"],
        "ref_cam_extrin": cams["ref_extrinsics"],
        "head_center": subject.head_center,
        "head_forward": subject.head_forward,
        "head_up": subject.head_up,
        "nose_tip": subject.nose_tip,
        "subject_seed": params.seed,
    }


def _anchor_images(subject: Subject, k: Tensor, e: Tensor, res: int, supersample: int) -> Tensor:
    """Spatial-anchor images [N, 3, H, W] as 0-255 values (same scale as the photos)."""
    anchors = render_spatial_anchor(
        subject.head_center,
        subject.head_forward,
        subject.head_up,
        k,
        e,
        res,
        res,
        supersample=supersample,
    )
    return (anchors * 255.0).round()


def generate_studio(config: StudioConfig, out_dir: str | Path) -> Path:
    """Generate the studio described by ``config`` into ``out_dir`` (or reuse it); returns out_dir.

    Raises :class:`StudioMismatchError` if ``out_dir`` already holds something else.
    """
    out_dir = Path(out_dir)
    if _existing_matches(out_dir, config):
        log.info("synthetic studio: reusing %s", out_dir)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_studio(config, staging)
        _publish(staging, out_dir, config)
    finally:
        # Removes the partial directory after a crash (and is a no-op after a successful rename).
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_studio(config: StudioConfig, root: Path) -> None:
    start = time.perf_counter()
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "files": {},
        "subject_seeds": {},
    }
    counts = {"train": config.num_train_subjects, "val": config.num_val_subjects}
    for split in SPLITS:
        (root / split).mkdir()
        names, seeds = [], []
        for index in track(range(counts[split]), f"rendering the studio ({split})"):
            seed = subject_seed(config.seed, split, index)
            params = SubjectParams.sample(seed, max_body_yaw_deg=config.max_body_yaw_deg)
            sample = render_subject_sample(params, config)
            name = f"{split}/subject_{index:05d}.npy"
            np.save(root / name, np.array(sample, dtype=object), allow_pickle=True)
            names.append(name)
            seeds.append(seed)
        manifest["files"][split] = names
        manifest["subject_seeds"][split] = seeds
    # The manifest is written last: a directory with a manifest is a complete one.
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "synthetic studio: %d subjects x %d views at %d px in %.1f s",
        sum(counts.values()),
        config.num_views,
        config.resolution,
        time.perf_counter() - start,
    )


def _publish(staging: Path, out_dir: Path, config: StudioConfig) -> None:
    """Rename the finished staging directory to ``out_dir`` (atomic on one filesystem)."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        os.rename(staging, out_dir)
    except OSError:
        # Another process published first: fine if it is the same studio.
        if not _existing_matches(out_dir, config):
            raise


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a generated studio directory."""
    return json.loads((Path(root) / MANIFEST).read_text())


def _existing_matches(out_dir: Path, config: StudioConfig) -> bool:
    """True if ``out_dir`` is a complete studio for ``config``; False if absent or empty."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return False
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise StudioMismatchError(
            f"{out_dir} exists and is not a synthetic studio (no {MANIFEST}); "
            "choose another directory or remove it"
        )
    manifest = read_manifest(out_dir)
    found = (manifest.get("format"), manifest.get("version"))
    if found != (FORMAT_NAME, FORMAT_VERSION):
        raise StudioMismatchError(
            f"{manifest_path}: format {found}, expected {(FORMAT_NAME, FORMAT_VERSION)}; "
            "remove the directory to regenerate it"
        )
    wanted = config.to_dict()
    stored = manifest.get("config", {})
    if stored != wanted:
        diff = _config_diff(stored, wanted)
        raise StudioMismatchError(
            f"{out_dir} holds a synthetic studio generated with another config ({diff}); "
            "use another root directory, or remove it to regenerate"
        )
    missing = [
        name
        for split in SPLITS
        for name in manifest["files"][split]
        if not (out_dir / name).is_file()
    ]
    if missing:
        raise StudioMismatchError(f"{out_dir}: manifest lists missing files, e.g. {missing[:3]}")
    return True


def _config_diff(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(wanted))
    parts = [
        f"{k}: on disk {stored.get(k)!r}, asked {wanted.get(k)!r}"
        for k in keys
        if stored.get(k) != wanted.get(k)
    ]
    return "; ".join(parts)


def studio_split_files(root: str | Path, split: str) -> Sequence[Path]:
    """The sample files of ``split`` listed in a studio's manifest."""
    root = Path(root)
    return [root / name for name in read_manifest(root)["files"][split]]
