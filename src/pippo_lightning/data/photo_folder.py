"""Photo folders for single-view pre-training (P1): any tree of photos, no cameras.

Items follow the single-view contract::

    images   [1, 3, R, R]  float32 in [-1, 1]   (one "view", so a [B, 1, ...] batch)
    index    int

Each photo is turned upright from its EXIF orientation, resized so its shorter side is R
(antialiased) and centre-cropped to R x R. Files that cannot be read are never dropped silently:
:func:`scan_photos` lists them (with the reason) so the data module can report them, and a file
that fails later, while training, raises (``on_error="raise"``) or is replaced by the next
readable photo with a warning naming it (``on_error="skip"``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from pippo_lightning.data.schema import SampleError

log = logging.getLogger(__name__)

PHOTO_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
Check = Literal["none", "header", "decode"]
OnError = Literal["raise", "skip"]
#: How many following photos to try before giving up when ``on_error="skip"``.
MAX_SKIPS = 16


@dataclass
class PhotoScan:
    """What a folder holds: readable photos, unreadable ones (with reasons), other files."""

    root: Path
    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    ignored: int = 0  # files without a photo suffix

    def summary(self) -> str:
        return (
            f"{self.root}: {len(self.files)} photos, {len(self.unreadable)} unreadable, "
            f"{self.ignored} other files ignored"
        )


def _probe(path: Path, check: Check) -> str | None:
    """None if the photo passes ``check``, else why not."""
    if check == "none":
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"empty image {width}x{height}"
            if check == "decode":
                image.load()
    except Exception as error:  # PIL raises many types for bad files
        return f"{type(error).__name__}: {error}"
    return None


def scan_photos(
    root: str | Path, check: Check = "header", suffixes: Sequence[str] = PHOTO_SUFFIXES
) -> PhotoScan:
    """All photos under ``root`` (recursive, sorted), checked by header or full decode."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist")
    scan = PhotoScan(root)
    allowed = {s.lower() for s in suffixes}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.suffix.lower() not in allowed:
            scan.ignored += 1
            continue
        reason = _probe(path, check)
        if reason is None:
            scan.files.append(path)
        else:
            scan.unreadable.append((path, reason))
    return scan


def split_of(path: Path, root: Path, val_fraction: float) -> str:
    """ "train" or "val" from a hash of the relative path: stable as the folder grows."""
    digest = hashlib.sha1(str(path.relative_to(root)).encode()).digest()
    return "val" if int.from_bytes(digest[:4], "big") / 2**32 < val_fraction else "train"


def load_photo(path: Path, size: int) -> torch.Tensor:
    """An upright RGB photo resized (shorter side = size) and centre-cropped: [3, size, size]
    float32 in [-1, 1]. Raises :class:`SampleError` naming the file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for large photos.
            image.draft("RGB", (size, size))
            image = ImageOps.exif_transpose(image).convert("RGB")
            width, height = image.size
            scale = size / min(width, height)
            new = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=2.0)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
            pixels = np.asarray(image, dtype=np.float32)  # [size, size, 3]
    except Exception as error:
        raise SampleError(
            f"{path}: cannot read the photo: {type(error).__name__}: {error}"
        ) from error
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0


class PhotoFolderDataset(Dataset):
    """Photos as single-view items ``{"images": [1, 3, R, R], "index"}`` (module docstring).

    files: the photos to serve (e.g. ``scan_photos(root).files`` or one split of them).
    Keys may be ints or (index, epoch) pairs (from :class:`~.samplers.EpochSampler`).
    """

    def __init__(self, files: Sequence[str | Path], resolution: int, on_error: OnError = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not files:
            raise FileNotFoundError("PhotoFolderDataset: no photos")
        self.files = [Path(f) for f in files]
        self.resolution, self.on_error = resolution, on_error
        self.failures: list[tuple[Path, str]] = []  # per process (each worker has its own)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = int(key[0] if isinstance(key, tuple) else key)
        for attempt in range(MAX_SKIPS if self.on_error == "skip" else 1):
            position = (index + attempt) % len(self.files)
            try:
                image = load_photo(self.files[position], self.resolution)
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                self.failures.append((self.files[position], str(error)))
                log.warning("skipping unreadable photo (serving the next one): %s", error)
                continue
            return {"images": image[None], "index": index}  # [1, 3, R, R]
        raise SampleError(
            f"{self.files[index]}: this and the next {MAX_SKIPS - 1} photos are unreadable"
        )
