"""Inference: a checkpoint, a photo and cameras → a stage batch → generated views.

Shared by ``pippo-generate`` (one photo, an orbit) and ``pippo-eval`` (dataset views). No Hydra
here: the CLIs turn their configs into these calls.

The photo is treated as seen from a *reference camera* (by default the studio's frontal camera,
see :mod:`pippo_lightning.geometry.orbit`); the spatial anchor is a fixed head pose in front of
it, drawn into every view as the stage saw it in training (8-bit values, mapped to [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor, nn

from pippo_lightning.checkpointing import allowed_checkpoint_globals, load_torch_file, refusal
from pippo_lightning.data.dataset import resize_images
from pippo_lightning.diffusion.sampling import SamplerFactory, sampler_name
from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.anchors import render_spatial_anchor
from pippo_lightning.geometry.cameras import camera_pose_vector, relative_azimuth_deg
from pippo_lightning.geometry.orbit import STUDIO_HEAD_HEIGHT, Cameras
from pippo_lightning.geometry.plucker import plucker_rays
from pippo_lightning.models.pippo import Pippo
from pippo_lightning.progress import progress_bar, progress_enabled
from pippo_lightning.stages.base import STAGE_CLASS_KEY, Batch, PippoStage
from pippo_lightning.stages.config import ConfigError, SamplingConfig, coerce, plain
from pippo_lightning.stages.post_train import PostTrainStage

#: The studio's backdrop; transparent photo pixels are composited onto it.
STUDIO_BACKGROUND: tuple[float, float, float] = (0.85, 0.85, 0.85)

CropBox = tuple[int, int, int, int]  # left, top, right, bottom (pixels, right/bottom exclusive)


class CheckpointError(PippoError, FileNotFoundError):
    """No checkpoint given, the file is missing, or it does not load into the configured stage."""


class PhotoError(PippoError, ValueError):
    """The photo is missing, unreadable as an image, or the crop box does not fit it."""


# ------------------------------------------------------------------------------- checkpoints


def load_stage(
    path: str | Path | None,
    compressor: nn.Module,
    stage_class: type[PippoStage] = PostTrainStage,
    map_location: str | torch.device = "cpu",
) -> PippoStage:
    """Rebuild a stage from a Lightning checkpoint's hyperparameters and weights, in eval mode.

    The compressor is passed in because its (frozen, possibly very large) weights are kept out
    of checkpoints by design; it must be the one the checkpoint was trained with.
    """
    if path is None or str(path) in ("", "???"):
        raise CheckpointError("no checkpoint given: pass ckpt=/path/to/checkpoints/last.ckpt")
    if str(path).startswith("hf://"):  # a Hub model pushed by `pippo-hub push`: pull it first
        from pippo_lightning.hub import resolve_checkpoint

        path = resolve_checkpoint(str(path))
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    check_stage_class(path, stage_class)
    try:
        # weights_only: a checkpoint is data; a pickle that needs code to load is refused.
        with allowed_checkpoint_globals():
            stage = stage_class.load_from_checkpoint(
                path, compressor=compressor, map_location=map_location, weights_only=True
            )
    except pickle.UnpicklingError as err:
        raise CheckpointError(str(refusal(path, err, kind="Lightning checkpoint"))) from err
    except (zipfile.BadZipFile, EOFError) as err:
        # torch's own message here is a long note about weights_only, beside the point.
        raise CheckpointError(
            f"{path} is not a readable Lightning checkpoint ({type(err).__name__})"
        ) from err
    except KeyError as err:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no {err} entry)") from err
    except (RuntimeError, TypeError, ValueError) as err:
        # torch lists every mismatching tensor; the header and the first one say enough.
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2] if line.strip())
        raise CheckpointError(
            f"{path} does not load into {stage_class.__name__} with the configured compressor "
            f"(use the compressor the run was trained with, see its .hydra/config.yaml): "
            f"{detail or type(err).__name__}"
        ) from err
    return stage.eval()


def checkpoint_metadata(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's top-level entries, memory-mapped (only the small metadata is actually
    read); None when it cannot be read (load_stage explains why)."""
    try:
        state = load_torch_file(path, mmap=True)
    except (RuntimeError, OSError, EOFError, PippoError, zipfile.BadZipFile):
        return None
    return state if isinstance(state, dict) else None


def saved_stage_class(path: str | Path) -> str | None:
    """The stage class a checkpoint was saved by ("package.module.Class"); None when it does
    not say (written before the entry existed) or cannot be read."""
    saved = (checkpoint_metadata(path) or {}).get(STAGE_CLASS_KEY)
    return saved if isinstance(saved, str) else None


def check_stage_class(path: Path, stage_class: type[PippoStage]) -> None:
    """Refuse a checkpoint saved by another stage, naming both and the setting to change."""
    saved = saved_stage_class(path)
    if saved is None or saved.rsplit(".", 1)[-1] == stage_class.__name__:
        return
    raise CheckpointError(
        f"{path} was saved by {saved}, not {stage_class.__module__}.{stage_class.__name__}: "
        f"pass stage_class={saved} if that is the model you mean"
    )


def require_posed_views(stage: PippoStage, path: str | Path) -> None:
    """Refuse a stage that cannot render views of given cameras from a reference photo (P1)."""
    if not (stage.use_cameras and stage.use_reference):
        raise CheckpointError(
            f"{path} is a {type(stage).__name__} checkpoint: it generates without cameras or a "
            "reference photo, so it cannot render views of a person; use a mid-train (M2) or "
            "post-train (P3) checkpoint"
        )


def checkpoint_step(path: str | Path) -> int | None:
    """The global step a Lightning checkpoint was saved at (None if it does not say)."""
    step = (checkpoint_metadata(path) or {}).get("global_step")
    return int(step) if step is not None else None


def sampling_config(stage: PippoStage, overrides: Mapping[str, Any] | None) -> SamplingConfig:
    """The checkpoint's sampling settings with ``overrides`` applied (unknown keys are an error)."""
    return coerce(SamplingConfig, {**plain(stage.sampling), **plain(overrides or {})}, "sampling")


# ------------------------------------------------------------------------------------ photos


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


# ----------------------------------------------------------------------------------- anchors


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


# ------------------------------------------------------------------------------------- batch


def build_batch(
    ref_image: Tensor,
    ref_cameras: Cameras,
    cameras: Cameras,
    anchor: AnchorPose,
    resolution: int,
    pivot: Sequence[float] | None = None,
    face_crop: Tensor | None = None,
) -> Batch:
    """The stage batch (see :mod:`pippo_lightning.data.dataset`) for one reference view
    [1, 3, R, R] and N target cameras, with a leading batch axis of 1.

    ``images`` is a zero placeholder: sampling reads only its shape. ``pivot`` is the vertical
    axis azimuths are measured around (None: the point the cameras look at, least squares).
    ``face_crop`` [1, 3, R, R] is the second reference of stages trained with one (it takes
    the reference camera, as in the original).
    """
    k, e = cameras  # [N, 3, 3], [N, 4, 4]
    ref_k, ref_e = ref_cameras  # [1, 3, 3], [1, 4, 4]
    r = resolution
    pivot_t = None if pivot is None else torch.tensor(pivot, dtype=torch.float32)
    parts = {
        "images": torch.zeros(len(k), 3, r, r),
        "ref_image": ref_image,
        "cam_pose": camera_pose_vector(k, e, r, r),  # [N, 16]
        "ref_cam_pose": camera_pose_vector(ref_k, ref_e, r, r),  # [1, 16]
        "plucker": plucker_rays(k, e, r, r),  # [N, 6, R, R]
        "ref_plucker": plucker_rays(ref_k, ref_e, r, r),
        "anchor": anchor_images(anchor, cameras, r),  # [N, 3, R, R]
        "ref_anchor": anchor_images(anchor, ref_cameras, r),
        "intrinsics": k,
        "extrinsics": e,
        "ref_intrinsics": ref_k,
        "ref_extrinsics": ref_e,
        "azimuth_deg": relative_azimuth_deg(e, ref_e, pivot=pivot_t),  # [N]
    }
    if face_crop is not None:
        parts["face_crop"] = face_crop
    return {key: value.float()[None] for key, value in parts.items()}


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# -------------------------------------------------------------------------------- generation


@contextmanager
def sampling_progress(
    networks: Sequence[nn.Module], num_steps: int, enabled: bool = True, label: str = "DDIM"
) -> Iterator[None]:
    """A rich progress bar over the sampler's steps while the block runs.

    The sampler calls the network exactly once per step (conditional and unconditional rows
    share one batched call), so a forward hook on the network advances the bar by one step.
    ``networks`` are all the networks sampling may use (trained and EMA weights): one of them
    runs per step.
    """
    # quiet where nobody looks (CI, a log file): pippo_lightning.progress
    with progress_bar(label, num_steps, enabled=enabled and progress_enabled()) as bar:
        handles = [network.register_forward_hook(lambda *_: bar.advance()) for network in networks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def generate_views(
    stage: PippoStage,
    batch: Batch,
    sampling: SamplingConfig,
    progress: bool = False,
    sampler: SamplerFactory | None = None,
) -> Tensor:
    """All target views of ``batch`` in one sequence (one sampling call) → [B, NV, 3, R, R].

    ``sampler``: the `sampler` config group's choice (DDIM, DPM-Solver++ 2M, UniPC); None: the
    stage's own.
    """
    # The trained network and, when the stage keeps one, its EMA copy (which sampling prefers).
    networks = [m for m in stage.modules() if isinstance(m, Pippo)]
    label = sampler_name(sampler or stage.sampler_factory).upper()
    with sampling_progress(networks, sampling.num_steps, enabled=progress, label=label):
        return stage.generate(batch, sampling, sampler=sampler)


def with_seed(sampling: SamplingConfig, seed: int) -> SamplingConfig:
    return dataclasses.replace(sampling, seed=int(seed))
