"""Which subjects a capture folder holds, how they split into train / val, and which camera is the
reference (the most frontal one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from pippo_lightning.captures.capture import (
    CaptureError,
    HeadPose,
    Rig,
    find_camera_file,
)
from pippo_lightning.geometry.cameras import (
    camera_centers,
    normalize,
)


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
