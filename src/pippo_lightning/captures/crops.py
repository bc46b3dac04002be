"""Square crops of capture images: a box centred or around the face, the crop itself, and the
intrinsics that follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from torch import Tensor

from pippo_lightning.geometry.cameras import (
    crop_intrinsics,
    scale_intrinsics,
)


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
