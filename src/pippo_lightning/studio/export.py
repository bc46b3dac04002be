"""Export synthetic-studio subjects as plain captures (PNG per camera + cameras + head file).

The export is what a real capture rig would hand over, so ``pippo-data prepare`` can be checked
end to end against the renderer's own ground truth (Plücker maps, anchors, cameras): see
``tests/test_data_prepare.py``. Dome cameras are named ``cam00``, ``cam01``, ... in the studio's
order; the studio's reference camera is ``ref``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pippo_lightning.captures.capture import (
    UNIT_TO_METRES,
    Conventions,
    write_cameras_json,
    write_krt,
)
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample

REFERENCE_NAME = "ref"


def studio_camera_names(count: int) -> list[str]:
    return [f"cam{i:02d}" for i in range(count)] + [REFERENCE_NAME]


def export_studio_subject(
    config: StudioConfig,
    subject_seed: int,
    out_dir: str | Path,
    camera_format: str = "json",
    conventions: Conventions | None = None,
    head: str = "pose",
    sample: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render subject ``subject_seed`` and write it as a capture directory; returns the sample.

    camera_format: "json" (``cameras.json``) or "krt" (``KRT``, world unit of ``conventions``).
    conventions: how to express the cameras (to exercise the convention guards).
    head: "pose" (centre + forward + up), "keypoints" (eyes, nose, ears) or "none".
    sample: the subject already rendered with ``config`` (skips rendering it again).
    """
    import imageio.v3 as iio

    out_dir = Path(out_dir)
    if sample is None:
        params = SubjectParams.sample(subject_seed, max_body_yaw_deg=config.max_body_yaw_deg)
        sample = render_subject_sample(params, config)
    images = torch.cat([sample["image"][:, 0], sample["ref_image"][:, 0]])  # [N + 1, 3, H, W]
    k = torch.cat([sample["cam_intrin"], sample["ref_cam_intrin"]])
    e = torch.cat([sample["cam_extrin"], sample["ref_cam_extrin"]])
    names = studio_camera_names(images.shape[0] - 1)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        pixels = image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        iio.imwrite(out_dir / "images" / f"{name}.png", pixels)
    height, width = images.shape[-2:]
    sizes = [(width, height)] * len(names)
    conventions = conventions or Conventions()
    if camera_format == "json":
        write_cameras_json(out_dir / "cameras.json", names, k, e, sizes, conventions)
    elif camera_format == "krt":
        write_krt(out_dir / "KRT", names, k, e, conventions.world_unit)
    else:
        raise ValueError(f"camera_format must be json or krt, got {camera_format!r}")
    _write_head(out_dir, sample, head, conventions)
    return sample


def _write_head(out_dir: Path, sample: dict[str, Any], head: str, conventions: Conventions) -> None:
    scale = 1.0 / UNIT_TO_METRES[conventions.world_unit]

    def world(x: torch.Tensor) -> list[float]:
        return (x.double() * scale).tolist()

    if head == "none":
        return
    centre, forward, up = sample["head_center"], sample["head_forward"], sample["head_up"]
    if head == "pose":
        data = {"center": world(centre), "forward": forward.tolist(), "up": up.tolist()}
    elif head == "keypoints":
        # Points of a rigid head frame: eyes 9 cm in front of the centre at its height, ears on
        # either side of it; head_from_keypoints recovers centre, forward and up from them.
        right = torch.cross(forward, up, dim=0)

        def point(r: float, u: float, f: float) -> list[float]:
            return world(centre + r * right + u * up + f * forward)

        data = {
            "keypoints": {
                "left_eye": point(-0.03, 0.0, 0.09),
                "right_eye": point(0.03, 0.0, 0.09),
                "nose": point(0.0, -0.03, 0.11),
                "left_ear": point(-0.08, 0.0, 0.0),
                "right_ear": point(0.08, 0.0, 0.0),
            }
        }
    else:
        raise ValueError(f"head must be pose, keypoints or none, got {head!r}")
    (out_dir / "head.json").write_text(json.dumps(data, indent=1) + "\n")
