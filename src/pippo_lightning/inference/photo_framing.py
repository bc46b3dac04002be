"""An ordinary photo → the reference view's framing: find the face, crop around it so that the
head lands where (and as large as) the training reference camera sees it.

Face detection runs offline with a cascade shipped inside a package: scikit-image's LBP frontal
face cascade (the `photo` extra; OpenCV 5 wheels no longer bundle Haar cascades). Where the crop
reaches past the photo, the studio backdrop fills it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.extras import require

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # left, top, right, bottom (pixels)


@dataclass(frozen=True)
class HeadFraming:
    """Where the head centre lands in the reference view (u, v: fractions of the side, from
    the top left) and the head's height as a fraction of the side."""

    u: float
    v: float
    size: float


@dataclass(frozen=True)
class FramedPhoto:
    """The square crop of the photo [3, S, S] (0-255) and how it was found."""

    image: Tensor
    face_box: Box | None
    crop_box: Box


def head_framing(
    reference: Mapping[str, object], head_center: Sequence[float], head_height_m: float
) -> HeadFraming:
    """Project the head (centre, height in metres) into the reference camera of the generate
    config (`reference`: radius, height, target, fov_deg; studio convention: y up, the camera
    on +z looking at the target)."""
    eye = np.array([0.0, float(reference["height"]), float(reference["radius"])])
    forward = np.asarray(list(reference["target"]), dtype=float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    offset = np.asarray(list(head_center), dtype=float) - eye
    depth = float(offset @ forward)
    focal = 0.5 / math.tan(math.radians(float(reference["fov_deg"])) / 2)  # in sides
    return HeadFraming(
        u=0.5 + focal * float(offset @ right) / depth,
        v=0.5 - focal * float(offset @ up) / depth,
        size=focal * head_height_m / depth,
    )


def detect_face(image: np.ndarray, min_side: int = 24) -> Box | None:
    """The largest frontal face in an RGB uint8 [H, W, 3] image, or None."""
    require("skimage", "face detection (pippo-generate framing=face)")
    from skimage.color import rgb2gray
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    height, width = image.shape[:2]
    largest = max(min_side, min(height, width))
    detector = Cascade(lbp_frontal_face_cascade_filename())
    found = detector.detect_multi_scale(
        img=rgb2gray(image),
        scale_factor=1.2,
        step_ratio=1,
        min_size=(min_side, min_side),
        max_size=(largest, largest),
    )
    if not found:
        return None
    face = max(found, key=lambda f: f["width"] * f["height"])
    left, top = int(face["c"]), int(face["r"])
    return left, top, left + int(face["width"]), top + int(face["height"])


def crop_around_face(face: Box, framing: HeadFraming, face_box_to_head: float) -> Box:
    """The square crop that puts the face's centre at (u, v) and makes the head (the face box
    times ``face_box_to_head``) ``framing.size`` of the side."""
    left, top, right, bottom = face
    head_px = (bottom - top) * face_box_to_head
    side = max(1, round(head_px / framing.size))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    crop_left = round(centre_x - framing.u * side)
    crop_top = round(centre_y - framing.v * side)
    return crop_left, crop_top, crop_left + side, crop_top + side


def crop_with_backdrop(photo: Tensor, box: Box, background: Sequence[float]) -> Tensor:
    """photo [3, H, W] (0-255) cropped to ``box``, which may reach outside it: the studio
    backdrop fills what the photo does not cover."""
    left, top, right, bottom = box
    height, width = photo.shape[-2:]
    fill = torch.tensor(list(background), dtype=photo.dtype).reshape(3, 1, 1) * 255.0
    out = fill.expand(3, bottom - top, right - left).clone()
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(bottom, height), min(right, width)
    if src_bottom > src_top and src_right > src_left:
        out[:, src_top - top : src_bottom - top, src_left - left : src_right - left] = photo[
            :, src_top:src_bottom, src_left:src_right
        ]
    return out


def frame_photo(
    photo: Tensor,
    reference: Mapping[str, object],
    head_center: Sequence[float],
    background: Sequence[float],
    head_height_m: float = 0.24,
    face_box_to_head: float = 1.6,
) -> FramedPhoto | None:
    """Crop ``photo`` [3, H, W] (0-255) to the training reference framing around its face;
    None when no face is found (the caller falls back to the centred square)."""
    pixels = photo.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, 3]
    face = detect_face(pixels)
    if face is None:
        log.info("no face found in the photo: using the centred square")
        return None
    framing = head_framing(reference, head_center, head_height_m)
    box = crop_around_face(face, framing, face_box_to_head)
    log.info("face at %s: photo cropped to %s", face, box)
    return FramedPhoto(crop_with_backdrop(photo, box, background), face, box)


FRAMING_MODES = ("auto", "face", "centre")


def frame_for_config(cfg: Mapping[str, object], photo: Tensor) -> FramedPhoto | None:
    """`pippo-generate`'s `framing` settings applied to ``photo``: `face` detects (and needs
    the `photo` extra), `auto` detects where scikit-image is installed, `centre` and an explicit
    `crop_box` keep the photo's own framing (None)."""
    from pippo_lightning.extras import available
    from pippo_lightning.inference.photo_background import BackgroundSettings
    from pippo_lightning.stages.config import ConfigError

    settings = cfg.get("framing") or {}
    mode = str(settings.get("mode", "auto"))
    if mode not in FRAMING_MODES:
        raise ConfigError(f"framing.mode must be one of {list(FRAMING_MODES)}, got {mode!r}")
    if mode == "centre" or cfg.get("crop_box") is not None:
        return None
    if mode == "auto" and not available("skimage"):
        log.warning(
            "no face detection (scikit-image missing: pip install 'pippo_lightning[photo]'); "
            "using the centred square of the photo"
        )
        return None
    return frame_photo(
        photo,
        cfg["reference"],
        cfg["anchor"]["center"],
        BackgroundSettings.from_config(cfg.get("background")).color,
        head_height_m=float(settings.get("head_height_m", 0.24)),
        face_box_to_head=float(settings.get("face_box_to_head", 1.6)),
    )
