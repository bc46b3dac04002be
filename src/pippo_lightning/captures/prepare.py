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
    out/previews/<split>/<sample>.png  reference | face | views with anchors; ray directions below"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pippo_lightning.captures.capture import (
    HEAD_FILE,
    UNIT_TO_METRES,
    Conventions,
    HeadPose,
    Rig,
    find_camera_file,
    read_cameras,
)
from pippo_lightning.captures.heads import (
    default_head,
    image_files,
    image_size,
    read_heads,
    scale_head,
)
from pippo_lightning.captures.preview import write_preview
from pippo_lightning.captures.rig import load_rig
from pippo_lightning.captures.sample import (
    UNSAFE_NAME_CHARACTERS,
    PrepareConfig,
    PrepareReport,
    build_sample,
)
from pippo_lightning.captures.subjects import find_subjects, split_subjects
from pippo_lightning.captures.writers import SplitWriter, split_writers
from pippo_lightning.checkpoints.atomic import atomic_directory
from pippo_lightning.progress import track

log = logging.getLogger(__name__)


FORMAT_NAME = "pippo_lightning.prepared"


FORMAT_VERSION = 1


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
        writers = split_writers(staging, config.format, config.shard_size)
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
    writer: SplitWriter,
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
        name = (
            f"{UNSAFE_NAME_CHARACTERS.sub('_', subject)}__{UNSAFE_NAME_CHARACTERS.sub('_', frame)}"
        )
        if sample is None:
            report.frames_skipped.append(name)
            continue
        sample.update(subject=subject, frame=frame)
        writer(name, sample)
        if len(report.samples[split]) < config.previews:
            write_preview(previews / f"{name}.png", sample)
        report.samples[split].append(name)
    return asdict(used)
