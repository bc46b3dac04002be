"""Preview images of samples: see at a glance whether cameras, anchors and rays line up.

Top row: the reference view (yellow frame), the face crop, then the target views with the spatial
anchor blended over them and a cross where the head centre projects. Bottom row: each view's
Plücker ray directions as colours ((d + 1) / 2 -> RGB), so neighbouring cameras show smoothly
turning colours and a flipped camera stands out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pippo_lightning.geometry.cameras import project_points

MAX_VIEWS = 8
ANCHOR_ALPHA = 0.6
REFERENCE_FRAME = (255, 220, 0)


def _hwc(pixels: Any) -> np.ndarray:
    """[3, H, W] 0-255 (tensor or array) -> [H, W, 3] uint8."""
    array = torch.as_tensor(pixels).float().clamp(0, 255).round().byte().numpy()
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _overlay(image: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Blend the anchor's non-black pixels over the image."""
    mask = anchor.max(axis=2, keepdims=True) > 8
    blended = (ANCHOR_ALPHA * anchor + (1 - ANCHOR_ALPHA) * image).astype(np.uint8)
    return np.where(mask, blended, image)


def _mark(image: np.ndarray, sample: dict[str, Any], k_key: str, e_key: str, view: int) -> None:
    if "head_center" not in sample:
        return
    k = torch.as_tensor(sample[k_key])[view, :3, :3].double()
    e = torch.as_tensor(sample[e_key])[view].double()
    uv, depth = project_points(torch.as_tensor(sample["head_center"]).double()[None], k, e[:3])
    if float(depth[0]) > 0:
        u, v = (int(round(float(x) - 0.5)) for x in uv[0])  # continuous -> pixel index
        size = max(3, image.shape[0] // 16)
        cv2.drawMarker(image, (u, v), (255, 0, 255), cv2.MARKER_CROSS, size, 1)


def _rays(plucker: Any) -> np.ndarray:
    """[6, H, W] Plücker -> [H, W, 3] uint8 colours of the directions."""
    directions = torch.as_tensor(plucker)[:3].float()
    return _hwc((directions + 1) * 127.5)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def preview_grid(sample: dict[str, Any]) -> np.ndarray:
    """The preview of one schema-layout sample as [2 * S, C * S, 3] uint8."""
    size = int(sample["image"].shape[-1])
    top, bottom = [], []
    ref = _hwc(sample["ref_image"][0, 0])
    _mark(ref, sample, "ref_cam_intrin", "ref_cam_extrin", 0)
    ref = _fit(_overlay(ref, _hwc(sample["ref_kpts"][0, 0])), size)
    cv2.rectangle(ref, (0, 0), (size - 1, size - 1), REFERENCE_FRAME, max(1, size // 64))
    top.append(ref)
    bottom.append(
        _fit(_rays(sample["ref_plucker"][0, 0]), size)
        if "ref_plucker" in sample
        else np.zeros_like(ref)
    )
    if "face_image" in sample:
        top.append(_fit(_hwc(sample["face_image"][0, 0]), size))
        bottom.append(np.zeros_like(ref))
    count = min(int(sample["image"].shape[0]), MAX_VIEWS)
    for view in range(count):
        image = _hwc(sample["image"][view, 0])
        _mark(image, sample, "cam_intrin", "cam_extrin", view)
        top.append(_overlay(image, _hwc(sample["kpts"][view, 0])))
        rays = sample.get("plucker")
        bottom.append(_rays(rays[view, 0]) if rays is not None else np.zeros_like(image))
    return np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)


def write_preview(path: str | Path, sample: dict[str, Any]) -> Path:
    """Write :func:`preview_grid` of ``sample`` as a PNG."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, preview_grid(sample))
    return path
