"""The inference pipeline: a checkpoint → a stage, a photo and cameras → a batch → generated views.

Shared by ``pippo-generate`` (one photo, an orbit) and ``pippo-eval`` (dataset views). No Hydra
here: the CLIs turn their configs into these calls. Photo preparation is in :mod:`.photo`.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pippo_lightning.checkpoints.loading import allowed_checkpoint_globals, refusal
from pippo_lightning.checkpoints.reading import saved_stage_class
from pippo_lightning.diffusion.sampling import SamplerFactory, sampler_name
from pippo_lightning.errors import PippoError
from pippo_lightning.geometry.cameras import camera_pose_vector, relative_azimuth_deg
from pippo_lightning.geometry.orbit import Cameras
from pippo_lightning.geometry.plucker import plucker_rays
from pippo_lightning.inference.photo import AnchorPose, anchor_images
from pippo_lightning.models.pippo import Pippo
from pippo_lightning.progress import progress_bar, progress_enabled
from pippo_lightning.stages.base import Batch, PippoStage
from pippo_lightning.stages.config import SamplingConfig, coerce, plain
from pippo_lightning.stages.post_train import PostTrainStage


class CheckpointError(PippoError, FileNotFoundError):
    """No checkpoint given, the file is missing, or it does not load into the configured stage."""


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
        from pippo_lightning.sharing.transfer import resolve_checkpoint

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


def sampling_config(stage: PippoStage, overrides: Mapping[str, Any] | None) -> SamplingConfig:
    """The checkpoint's sampling settings with ``overrides`` applied (unknown keys are an error)."""
    return coerce(SamplingConfig, {**plain(stage.sampling), **plain(overrides or {})}, "sampling")


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
