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
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from pippo_lightning.data.datamodule import LoaderSettings
from pippo_lightning.data.samplers import EpochSampler
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


class PhotoFolderDataModule(LoaderSettings, LightningDataModule):
    """Single-view batches ``{"images": [B, 1, 3, R, R], "index": [B]}`` from a photo tree.

    Photos are split into train / val by a hash of their relative path (``val_fraction``).
    :meth:`setup` scans the folder (``check``: "header" opens each file's header, "decode"
    decodes every photo, "none" trusts the suffix) and reports unreadable files: a warning
    with the count and the first paths, and the full list in :attr:`unreadable`.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.01,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        seed: int = 0,
        check: Check = "header",
        on_error: OnError = "raise",
        suffixes: Sequence[str] = PHOTO_SUFFIXES,
    ) -> None:
        super().__init__()
        self.root, self.resolution, self.seed = Path(root), resolution, seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.val_fraction, self.check, self.on_error = val_fraction, check, on_error
        self.suffixes = tuple(suffixes)
        self._set_loader(num_workers, pin_memory, persistent_workers, prefetch_factor)
        self.unreadable: list[tuple[Path, str]] = []
        self.train_dataset: PhotoFolderDataset | None = None
        self.val_dataset: PhotoFolderDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        scan = scan_photos(self.root, self.check, self.suffixes)
        self.unreadable = scan.unreadable
        if scan.unreadable:
            shown = "; ".join(f"{p}: {why}" for p, why in scan.unreadable[:5])
            log.warning(
                "%d of %d photos under %s are unreadable and left out (first: %s)",
                len(scan.unreadable),
                len(scan.unreadable) + len(scan.files),
                self.root,
                shown,
            )
        splits: dict[str, list[Path]] = {"train": [], "val": []}
        for path in scan.files:
            splits[split_of(path, self.root, self.val_fraction)].append(path)
        if not splits["train"]:
            raise FileNotFoundError(f"no readable photos for training under {self.root}")
        self.train_dataset = PhotoFolderDataset(splits["train"], self.resolution, self.on_error)
        if splits["val"]:
            self.val_dataset = PhotoFolderDataset(splits["val"], self.resolution, self.on_error)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_dataset is not None
        sampler = EpochSampler(len(self.train_dataset), seed=self.seed, shuffle=True)
        return self._loader(self.train_dataset, self.batch_size, resumable=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)
