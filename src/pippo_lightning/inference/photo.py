"""Photo preparation for inference: a photo file → a square crop at the model's resolution, and the
spatial anchor drawn for the reference camera.

The photo is treated as seen from a *reference camera* (by default the studio's frontal camera,
see :mod:`pippo_lightning.geometry.orbit`); the spatial anchor is a fixed head pose in front of
it, drawn into every view as the stage saw it in training (8-bit values, mapped to [-1, 1]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from pippo_lightning.data.preparation import resize_images
from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.anchors import render_spatial_anchor
from pippo_lightning.geometry.orbit import STUDIO_HEAD_HEIGHT, Cameras
from pippo_lightning.stages.config import ConfigError

#: The studio's backdrop; transparent photo pixels are composited onto it.
STUDIO_BACKGROUND: tuple[float, float, float] = (0.85, 0.85, 0.85)


CropBox = tuple[int, int, int, int]  # left, top, right, bottom (pixels, right/bottom exclusive)


class PhotoError(PippoError, ValueError):
    """The photo is missing, unreadable as an image, or the crop box does not fit it."""


def read_photo(path: str | Path, background: Sequence[float] = STUDIO_BACKGROUND) -> Tensor:
    """An image file → float32 [3, H, W] with 0-255 values (EXIF rotation applied).

    Transparent pixels are composited onto ``background`` (RGB in [0, 1]): a cut-out subject
    lands on the backdrop the model was trained with, not on black.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"photo {path} does not exist")
    try:
        rgba = iio.imread(path, plugin="pillow", mode="RGBA", rotate=True)  # [H, W, 4] uint8
    except Exception as err:  # Pillow raises many types for a bad file; all mean "not an image"
        raise PhotoError(f"cannot read photo {path} as an image: {err}") from err
    if rgba.ndim != 3 or rgba.shape[0] < 1 or rgba.shape[1] < 1:
        raise PhotoError(f"photo {path} holds no single image (shape {list(rgba.shape)})")
    pixels = torch.from_numpy(np.ascontiguousarray(rgba)).float().permute(2, 0, 1)  # [4, H, W]
    alpha = pixels[3:] / 255.0
    backdrop = torch.tensor(background, dtype=torch.float32).reshape(3, 1, 1) * 255.0
    return pixels[:3] * alpha + backdrop * (1.0 - alpha)


def centre_square_box(height: int, width: int) -> CropBox:
    """The largest centred square of an H x W image."""
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def check_crop_box(box: Sequence[int], height: int, width: int) -> CropBox:
    """Validate [left, top, right, bottom] against an H x W photo; must be square."""
    if len(box) != 4:
        raise PhotoError(f"crop box must be [left, top, right, bottom], got {list(box)}")
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise PhotoError(
            f"crop box {[left, top, right, bottom]} is not inside the {width}x{height} photo"
        )
    if right - left != bottom - top:
        raise PhotoError(
            f"crop box must be square (the model's views are square), got "
            f"{right - left}x{bottom - top}"
        )
    return left, top, right, bottom


def prepare_photo(photo: Tensor, resolution: int, crop_box: Sequence[int] | None = None) -> Tensor:
    """Photo [3, H, W] (0-255) → the reference view [1, 3, R, R] in [-1, 1].

    Crops (``crop_box``, or the centred square) and resizes with the antialiased filter the
    dataset uses, so the reference looks like the ones the model was trained on.
    """
    height, width = photo.shape[-2:]
    box = (
        centre_square_box(height, width)
        if crop_box is None
        else check_crop_box(crop_box, height, width)
    )
    left, top, right, bottom = box
    crop = photo[None, :, top:bottom, left:right]  # [1, 3, S, S]
    resized = resize_images(crop, resolution, resolution)
    return (resized / 127.5 - 1.0).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class AnchorPose:
    """The head pose the spatial anchor marks (world, studio convention): where and facing where.

    Defaults: the studio's mean head centre, facing +z (the reference camera), upright.
    """

    center: tuple[float, float, float] = (0.0, STUDIO_HEAD_HEIGHT, 0.01)
    forward: tuple[float, float, float] = (0.0, 0.0, 1.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    supersample: int = 1

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> AnchorPose:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(
                f"anchor: unknown key(s) {unknown}; expected center, forward, up, supersample"
            )
        for key in ("center", "forward", "up"):
            if key in values:
                vector = tuple(float(v) for v in values[key])
                if len(vector) != 3:
                    raise ConfigError(f"anchor.{key} must be 3 numbers, got {list(vector)}")
                values[key] = vector
        return cls(**values)


def anchor_images(pose: AnchorPose, cameras: Cameras, resolution: int) -> Tensor:
    """Spatial-anchor images [N, 3, R, R] in [-1, 1] for cameras K [N, 3, 3], E [N, 4, 4].

    Quantised to 8 bits first, exactly as the studio stores its anchors, so the values match
    the training distribution.
    """
    intrinsics, extrinsics = cameras
    unit = render_spatial_anchor(
        torch.tensor(pose.center),
        torch.tensor(pose.forward),
        torch.tensor(pose.up),
        intrinsics,
        extrinsics,
        resolution,
        resolution,
        supersample=pose.supersample,
    )
    return ((unit * 255.0).round() / 127.5 - 1.0).clamp(-1.0, 1.0)
