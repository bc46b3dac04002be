"""`pippo-generate`: one photo + a checkpoint → N views along an orbit, in one sampling pass.

Writes into the run directory: ``frames/view_###.png`` (one per camera, in orbit order),
``grid.png`` (the reference on top, then the views), ``turntable.mp4`` (``.gif`` where no mp4
writer is installed), ``anchors.png`` (where the spatial anchor lands in each view),
``cameras.json`` (the cameras used, readable back with ``orbit.kind=file``) and ``summary.json``
(settings, time, peak memory)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pippo_lightning.callbacks.images import to_uint8, view_grid, write_image_atomic
from pippo_lightning.callbacks.media import VideoFile, write_video
from pippo_lightning.cli.common import CONFIG_DIR, check_overrides, guarded
from pippo_lightning.diffusion.sampling import SamplerFactory, sampler_name
from pippo_lightning.geometry.orbit import (
    Cameras,
    cameras_from_file,
    frontal_camera,
    turntable_cameras,
    write_cameras_file,
)
from pippo_lightning.inference.device import autocast, peak_memory_mb, pick_device, synchronize
from pippo_lightning.inference.loading import compressor_config
from pippo_lightning.inference.photo import AnchorPose, PhotoError, prepare_photo
from pippo_lightning.inference.photo_background import photo_for_config
from pippo_lightning.inference.photo_framing import FramedPhoto, frame_for_config
from pippo_lightning.inference.pipeline import (
    CheckpointError,
    batch_to,
    build_batch,
    generate_views,
    load_stage,
    require_posed_views,
    sampling_config,
)
from pippo_lightning.sharing.transfer import resolve_checkpoint
from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.config import ConfigError, SamplingConfig
from pippo_lightning.stages.precision import resolve_precision


@dataclass
class GenerateResult:
    """What one `pippo-generate` run produced and what it cost."""

    output_dir: Path
    frames: list[Path]
    grid: Path
    video: VideoFile
    num_views: int
    trained_views: int
    attention_scale: float | None
    generate_s: float  # the sampling call: encode, all DDIM steps, decode
    total_s: float  # from the start of `generate` to the last file written
    peak_memory_mb: float
    memory_kind: str  # "cuda_max_allocated" or "process_max_rss"
    device: str
    compressor_source: str  # the training run's saved config, or "config"
    framing: dict[str, Any] | None = None  # the face found and the crop taken (framing=face)


def required(cfg: DictConfig, key: str, error: type[Exception], hint: str) -> Any:
    """A mandatory (``???``) config value, or one clear error naming how to pass it."""
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise error(f"no {key} given: pass {key}={hint}")
    return cfg[key]


def check_orbit(cfg: DictConfig) -> None:
    """Fail on a bad orbit setting or camera file before the (slow) model load."""
    orbit = cfg.orbit
    if orbit.kind not in ("turntable", "file"):
        raise ConfigError(f"orbit.kind must be 'turntable' or 'file', got {orbit.kind!r}")
    if orbit.kind == "file" and not orbit.get("file"):
        raise ConfigError("orbit.kind=file needs orbit.file=/path/to/cameras.json")
    if orbit.kind == "file":
        cameras_from_file(orbit.file)
    elif int(cfg.num_views) < 1:
        raise ConfigError(f"num_views must be >= 1, got {cfg.num_views}")


def orbit_cameras(cfg: DictConfig, num_views: int, resolution: int) -> Cameras:
    """Target cameras: the turntable of ``cfg.orbit`` or the cameras of ``cfg.orbit.file``."""
    orbit = cfg.orbit
    if orbit.kind == "file":
        return cameras_from_file(orbit.file, resolution)
    return turntable_cameras(
        num_views,
        elevation_deg=orbit.elevation_deg,
        radius=orbit.radius,
        pivot=tuple(orbit.pivot),
        start_azimuth_deg=orbit.start_azimuth_deg,
        fov_deg=orbit.fov_deg,
        resolution=resolution,
    )


def build_inputs(
    cfg: DictConfig, stage: PippoStage, photo: torch.Tensor, framed: FramedPhoto | None = None
) -> tuple[dict[str, Any], Cameras, int]:
    """The stage batch for ``photo`` and the configured cameras; also the cameras and the
    number of reference views (2 when the stage takes a face crop)."""
    resolution = stage.image_size
    # issue #17: a face-framed crop of an ordinary photo (photo_framing), else crop_box / centre
    ref_image = (
        prepare_photo(photo, resolution, cfg.crop_box)
        if framed is None
        else prepare_photo(framed.image, resolution)
    )
    face_crop = None
    if getattr(stage, "use_face_crop", False):
        if cfg.get("face_crop_box") is None:
            raise ConfigError(
                "this checkpoint was trained with a face crop as second reference: pass "
                "face_crop_box=[left,top,right,bottom] (a square around the face, photo pixels)"
            )
        face_crop = prepare_photo(photo, resolution, cfg.face_crop_box)
    cameras = orbit_cameras(cfg, int(cfg.num_views), resolution)
    ref = cfg.reference
    ref_cameras = frontal_camera(ref.radius, ref.height, tuple(ref.target), ref.fov_deg, resolution)
    pivot = tuple(cfg.orbit.pivot) if cfg.orbit.kind == "turntable" else None
    anchor = AnchorPose.from_mapping(OmegaConf.to_container(cfg.anchor, resolve=True))
    batch = build_batch(ref_image, ref_cameras, cameras, anchor, resolution, pivot, face_crop)
    return batch, cameras, 1 if face_crop is None else 2


def measured_generation(
    stage: PippoStage,
    batch: dict[str, Any],
    sampling: SamplingConfig,
    device: torch.device,
    cfg: DictConfig,
    sampler: SamplerFactory,
) -> tuple[torch.Tensor, float, float]:
    """Views [NV, 3, R, R] of one sampling call, its wall time (s) and the peak memory (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, cfg.precision):
        views = generate_views(stage, batch, sampling, progress=cfg.progress, sampler=sampler)[0]
    synchronize(device)
    return views.float(), time.perf_counter() - start, peak_memory_mb(device)


def generate(cfg: DictConfig) -> GenerateResult:
    """Run the configured generation; returns the written files, time and peak memory."""
    start = time.perf_counter()
    ckpt = required(cfg, "ckpt", CheckpointError, "/path/to/checkpoints/last.ckpt")
    # Photo and cameras are checked before the (slow) model load so bad input fails at once.
    photo = photo_for_config(cfg, required(cfg, "photo", PhotoError, "/path/to/photo.jpg"))
    check_orbit(cfg)
    framed = frame_for_config(cfg, photo)
    device = pick_device(cfg.device)
    # hf://owner/name: pull first, so the run's compressor config next to it is found
    ckpt = str(resolve_checkpoint(ckpt))
    compressor_node, compressor_source = compressor_config(cfg, ckpt)
    stage_class = hydra.utils.get_class(cfg.stage_class)
    stage = load_stage(ckpt, hydra.utils.instantiate(compressor_node), stage_class).to(device)
    require_posed_views(stage, ckpt)

    batch, cameras, num_refs = build_inputs(cfg, stage, photo, framed)
    batch = batch_to(batch, device)
    sampling = sampling_config(stage, OmegaConf.to_container(cfg.sampling, resolve=True))
    sampler: SamplerFactory = hydra.utils.instantiate(cfg.sampler)
    # a sampler refusing these settings (eta > 0 with an ODE solver) fails before sampling
    stage.build_sampler(sampling, sampler)
    views, generate_s, peak = measured_generation(stage, batch, sampling, device, cfg, sampler)

    out = Path(cfg.paths.output_dir)
    frames, grid, video = write_outputs(out, views, batch, cfg.output)
    write_cameras_file(out / "cameras.json", *cameras, stage.image_size)
    num_views = len(views)
    result = GenerateResult(
        output_dir=out,
        frames=frames,
        grid=grid,
        video=video,
        num_views=num_views,
        trained_views=stage.num_views,
        attention_scale=stage.attention_scale(sampling, num_views, num_refs=num_refs),
        generate_s=generate_s,
        total_s=time.perf_counter() - start,
        peak_memory_mb=peak,
        memory_kind="cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        compressor_source=compressor_source,
        framing=None
        if framed is None
        else {"face_box": list(framed.face_box or ()), "crop_box": list(framed.crop_box)},
    )
    compressor_info = {
        "source": compressor_source,
        "config": OmegaConf.to_container(compressor_node, resolve=True),
    }
    write_summary(
        result, cfg, {**asdict(sampling), "sampler": sampler_name(sampler)}, compressor_info
    )
    print_summary(result)
    return result


def write_outputs(
    out: Path, views: torch.Tensor, batch: dict[str, Any], options: DictConfig
) -> tuple[list[Path], Path, VideoFile]:
    """PNG per view, the grid, the anchor grid and the video, from views [NV, 3, R, R]."""
    pixels = to_uint8(views)  # [NV, R, R, 3]
    frames = [
        write_image_atomic(out / "frames" / f"view_{i:03d}.png", frame)
        for i, frame in enumerate(pixels)
    ]
    columns = max(1, int(options.grid_columns))
    rows = [[batch["ref_image"][0].cpu()]]
    rows += [[views[i : i + columns].cpu()] for i in range(0, len(views), columns)]
    grid = write_image_atomic(out / "grid.png", view_grid(rows))
    anchors = batch["anchor"][0].cpu()
    anchor_rows = [[anchors[i : i + columns]] for i in range(0, len(anchors), columns)]
    write_image_atomic(out / "anchors.png", view_grid(anchor_rows))
    video = write_video(out / "turntable", pixels, float(options.fps), options.video_format)
    return frames, grid, video


def write_summary(
    result: GenerateResult,
    cfg: DictConfig,
    sampling_fields: dict[str, Any],
    compressor: dict[str, Any],
) -> None:
    summary = {
        "checkpoint": str(cfg.ckpt),
        "compressor": compressor,
        "photo": str(cfg.photo),
        "num_views": result.num_views,
        "trained_views": result.trained_views,
        "attention_scale": result.attention_scale,
        "sampling": sampling_fields,
        "generate_s": result.generate_s,
        "total_s": result.total_s,
        "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind,
        "device": result.device,
        # what `auto` resolved to on this machine
        "precision": resolve_precision(
            cfg.precision,
            "cpu" if result.device == "cpu" else "gpu",
        ),
        "frames": [str(p) for p in result.frames],
        "grid": str(result.grid),
        "video": str(result.video.path),
        "video_fallback_reason": result.video.fallback_reason,
        "framing": result.framing,
    }
    (result.output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def print_summary(result: GenerateResult) -> None:
    video = f"{result.video.path}"
    if result.video.fallback_reason:
        video += f"  (GIF: {result.video.fallback_reason})"
    biasing = (
        f"softmax scale {result.attention_scale:.4f}"
        if result.attention_scale is not None
        else "off"
    )
    print(
        "\n".join(
            [
                "",
                f"views         : {result.num_views} in one sequence (trained with "
                f"{result.trained_views}); attention biasing {biasing}",
                f"time          : {result.generate_s:.2f} s sampling, {result.total_s:.2f} s total "
                f"on {result.device}",
                f"peak memory   : {result.peak_memory_mb:.0f} MiB ({result.memory_kind})",
                f"compressor    : from {result.compressor_source}",
                f"frames        : {result.output_dir / 'frames'}",
                f"grid          : {result.grid}",
                f"video         : {video}",
            ]
        )
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="generate")
@guarded
def _main(cfg: DictConfig) -> None:
    generate(cfg)


def main() -> None:
    check_overrides("generate")
    _main()


if __name__ == "__main__":
    main()
