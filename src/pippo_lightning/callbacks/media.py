"""Turnaround videos of generated views: the file writer and the W&B validation callback.

Videos are mp4 (H.264, via imageio's pyav or imageio-ffmpeg plugin) at an explicit frame rate.
Where neither plugin is installed the same frames are written as an animated GIF (Pillow, always
present) and the reason is returned, so callers can say what they wrote and why.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from pippo_lightning.callbacks.images import generated_outputs, to_uint8
from pippo_lightning.checkpoints.atomic import atomic_path

log = logging.getLogger(__name__)

NO_MP4_WRITER = "no mp4 writer: install imageio-ffmpeg (`pip install imageio[ffmpeg]`) or PyAV"


@dataclass(frozen=True)
class VideoFile:
    """A written video: where, in which format, and why it is not mp4 when mp4 was asked for."""

    path: Path
    format: str  # "mp4" or "gif"
    fallback_reason: str | None = None


def _mp4_plugin() -> str | None:
    """The imageio plugin able to write H.264 here, if any."""
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "FFMPEG"
    return None


def _write_mp4(path: str, frames: np.ndarray, fps: float, plugin: str) -> None:
    if plugin == "pyav":
        # yuv420p: the pixel format every browser (and the W&B player) decodes.
        iio.imwrite(
            path, frames, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p"
        )
    else:
        # macro_block_size 8: model resolutions are multiples of 8; ffmpeg's default 16 would
        # silently resize e.g. 504 px frames.
        iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=8)


def _write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    # Pillow takes the frame duration in milliseconds; loop=0 repeats forever.
    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def write_video(stem: str | Path, frames: np.ndarray, fps: float, format: str = "mp4") -> VideoFile:
    """Write frames uint8 [N, H, W, 3] to ``<stem>.mp4`` (or ``<stem>.gif``) at ``fps``.

    ``format`` "mp4" falls back to GIF when no mp4 writer is installed or encoding fails
    (:attr:`VideoFile.fallback_reason` says why); "gif" writes GIF directly. The file appears
    atomically (written under a temporary name, then renamed).
    """
    if format not in ("mp4", "gif"):
        raise ValueError(f"video format must be 'mp4' or 'gif', got {format!r}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}"
        )
    stem = Path(stem)
    reason = None
    if format == "mp4":
        plugin = _mp4_plugin()
        if plugin is None:
            reason = NO_MP4_WRITER
        else:
            try:
                return VideoFile(_atomic(stem.with_suffix(".mp4"), frames, fps, plugin), "mp4")
            except Exception as err:  # a broken codec install: still leave a playable file
                reason = f"mp4 encoding failed ({type(err).__name__}: {err})"
    return VideoFile(_atomic(stem.with_suffix(".gif"), frames, fps, None), "gif", reason)


def _atomic(path: Path, frames: np.ndarray, fps: float, mp4_plugin: str | None) -> Path:
    """Encode into a temporary sibling, then rename: readers never see half a video."""
    with atomic_path(path) as temporary:
        if mp4_plugin is None:
            _write_gif(str(temporary), frames, fps)
        else:
            _write_mp4(str(temporary), frames, fps, mp4_plugin)
    return path


# ------------------------------------------------------------------------------- the callback


class TurntableVideoLogger(L.Callback):
    """Logs the generated views of the first validation samples as turnaround videos.

    Uses what ``validation_step`` returns (``{"generated": [B, NV, 3, H, W], ...}``), the same
    outputs :class:`~pippo_lightning.callbacks.samples.SampleGridLogger` draws. Videos go to
    ``output_dir/val_step<step>_sample<i>.mp4`` (GIF where no mp4 writer is installed) and to
    every W&B logger as ``key``.

    Only rank 0 works. Nothing here may stop or stall training: encoding and upload run in a
    daemon thread while training goes on (a validation that finds the previous video still
    encoding drops its own), the end of fit waits for the last one at most ``timeout_s``, and
    every failure — encoding, disk, W&B — becomes a warning.
    """

    def __init__(
        self,
        output_dir: str | Path,
        fps: float = 4.0,
        format: str = "mp4",
        max_samples: int = 1,
        key: str = "val/turntable",
        timeout_s: float = 60.0,
    ) -> None:
        if format not in ("mp4", "gif") or fps <= 0 or max_samples < 1 or timeout_s <= 0:
            raise ValueError(
                "TurntableVideoLogger: need format mp4|gif, fps > 0, max_samples >= 1, "
                f"timeout_s > 0; got {format!r}, {fps}, {max_samples}, {timeout_s}"
            )
        self.output_dir = Path(output_dir)
        self.fps, self.format, self.key = fps, format, key
        self.max_samples, self.timeout_s = max_samples, timeout_s
        self._clips: list[np.ndarray] = []  # uint8 [NV, H, W, 3] per sample
        self.last_videos: list[VideoFile] = []
        self._pending: threading.Event | None = None  # set when the last encoding has finished

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clips = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        found = generated_outputs(trainer.is_global_zero, outputs)
        if found is None:
            return
        for views in found["generated"][: self.max_samples - len(self._clips)]:
            self._clips.append(to_uint8(views))  # copies to CPU now: the batch is freed after

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self._clips:
            return
        clips, self._clips = self._clips, []
        step = trainer.global_step
        if self._pending is not None and not self._pending.is_set():
            # never queue up behind a slow encoder: this validation's video is dropped instead
            log.warning(
                "turntable video of step %d skipped: the previous one is still encoding", step
            )
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        done = threading.Event()

        def work() -> None:
            try:
                self._publish(loggers, clips, step)
            except Exception as err:  # media must never crash training
                log.warning("turntable video skipped: %s: %s", type(err).__name__, err)
            finally:
                done.set()

        # encoding runs beside training: the loop goes on at once (issue #17)
        self._pending = done
        threading.Thread(target=work, name="turntable-video", daemon=True).start()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last video reaches W&B before the run is closed, or is given up after timeout_s
        self.flush()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``, default the callback's) for the video being encoded;
        True when nothing is left running. An encoder that hangs is abandoned, not awaited."""
        pending = self._pending
        if pending is None or pending.wait(self.timeout_s if timeout_s is None else timeout_s):
            return True
        log.warning("turntable video encoding took over %.0f s; skipped", self.timeout_s)
        return False

    def _publish(self, loggers: list[WandbLogger], clips: list[np.ndarray], step: int) -> None:
        videos = [
            write_video(
                self.output_dir / f"val_step{step:07d}_sample{i}", frames, self.fps, self.format
            )
            for i, frames in enumerate(clips)
        ]
        self.last_videos = videos
        for video in videos:
            if video.fallback_reason:
                log.info("turntable video written as GIF: %s", video.fallback_reason)
        if not videos or not loggers:
            return
        captions = [f"sample {i}: generated views, {self.fps:g} fps" for i in range(len(videos))]
        for logger in loggers:
            try:
                logger.log_video(
                    key=self.key, videos=[str(v.path) for v in videos], step=step, caption=captions
                )
            except Exception as err:  # an upload problem is reported, never raised
                log.warning("could not log the turntable video to W&B: %s", err)
