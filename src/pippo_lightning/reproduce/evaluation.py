"""Score one source of views (a trained job, the reference copied, the ground truth) on the
held-out subjects, through the pieces `pippo-eval` and validation use.

Every source is scored by :func:`score_source` on the same loader (the split's subjects, views
evenly spaced from the reference azimuth), with the same sampling seed per batch as pippo-eval,
the same :class:`~pippo_lightning.metrics.image.ImageMetrics` (PSNR, SSIM, LPIPS when local) and
the same :class:`~pippo_lightning.metrics.ReprojectionError`. The reprojection metric is fed one
view pair at a time (the pairs the metric itself picks for the whole set), so that the error can
also be read per pair, i.e. against azimuth; merging the per-pair states gives exactly the
metric of the whole set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from pippo_lightning.inference.loading import eval_loader
from pippo_lightning.inference.pipeline import batch_to, generate_views, load_stage, with_seed
from pippo_lightning.metrics.image import ImageMetrics
from pippo_lightning.metrics.reprojection import ReprojectionError
from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.config import SamplingConfig

#: A source of views: (batch index, batch) -> images [B, NV, 3, H, W] in [-1, 1].
ViewSource = Callable[[int, dict[str, Any]], Tensor]


@dataclass
class SourceScore:
    """What :func:`score_source` measured for one source of views."""

    metrics: dict[str, float | int | None]
    #: per view pair (in pair order): mean azimuth of the pair's views from the reference
    #: (degrees, [0, 360)), mean error in px over all subjects (None: never matched), matched
    #: subjects and tried subjects
    by_pair: list[dict[str, float | int | None]] = field(default_factory=list)
    #: the first subject's views [NV, 3, H, W] (for the comparison grid)
    first_views: Tensor | None = None


def _number(value: Tensor | float | int) -> float | int | None:
    """JSON-safe: NaN (nothing matched) and inf (PSNR of identical images) become None."""
    value = value.item() if isinstance(value, Tensor) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def held_out_loader(
    data: Mapping[str, Any],
    image_size: int,
    num_views: int,
    max_subjects: int | None,
    seed: int = 0,
    batch_size: int = 1,
    split: str = "val",
    view_step_deg: float | None = None,
) -> DataLoader:
    """pippo-eval's loader over ``split`` of the data config ``data`` (resolved, as trained)."""
    cfg = OmegaConf.create(
        {
            "data": dict(data),
            "split": split,
            "seed": seed,
            "max_subjects": max_subjects,
            "batch_size": batch_size,
            "view_step_deg": view_step_deg,
        }
    )
    return eval_loader(cfg, image_size, num_views)


def circular_mean_deg(a: float, b: float) -> float:
    """Mean of two azimuths on the circle, in [0, 360)."""
    x = math.cos(math.radians(a)) + math.cos(math.radians(b))
    y = math.sin(math.radians(a)) + math.sin(math.radians(b))
    return math.degrees(math.atan2(y, x)) % 360.0


def score_source(
    source: ViewSource,
    loader: DataLoader,
    reprojection: Mapping[str, Any],
    lpips: bool | str = "auto",
) -> SourceScore:
    """PSNR / SSIM (/ LPIPS) against the ground truth and reprojection error of ``source``."""
    options = dict(reprojection)
    images = ImageMetrics(lpips=lpips)
    total = ReprojectionError(**options)
    per_pair: list[ReprojectionError] = []
    azimuths: list[float] = []
    first_views = None
    for batch_idx, batch in enumerate(loader):
        target = batch["images"]  # [B, NV, 3, H, W]
        views = source(batch_idx, batch).float().cpu()
        if first_views is None:
            first_views = views[0]
        images.update(views, target)
        for sample in range(len(views)):
            # the pairs ReprojectionError picks for this sample's whole set of views
            pairs = total._select_pairs(batch["extrinsics"][sample])
            while len(per_pair) < len(pairs):
                per_pair.append(ReprojectionError(**options))
            for k, (i, j) in enumerate(pairs):
                pick = [i, j]
                per_pair[k].update(
                    views[sample : sample + 1, pick],
                    batch["intrinsics"][sample : sample + 1, pick],
                    batch["extrinsics"][sample : sample + 1, pick],
                )
                if len(azimuths) <= k:
                    azimuth = batch["azimuth_deg"][sample]
                    azimuths.append(circular_mean_deg(float(azimuth[i]), float(azimuth[j])))
    for pair_metric in per_pair:
        total.merge_state(pair_metric)
    with warnings.catch_warnings():
        # merged states have no update() of their own, which torchmetrics takes for an error
        warnings.filterwarnings("ignore", message=".*before the ``update`` method.*")
        re_total = total.compute()
        by_pair = []
        for azimuth, metric in zip(azimuths, per_pair):
            result = metric.compute()
            by_pair.append(
                {
                    "azimuth_deg": azimuth,
                    "re_px": _number(result["reprojection_error_px"]),
                    "matched": int(result["pairs"] - result["failed_pairs"]),
                    "tried": int(result["pairs"]),
                }
            )
    computed = images.compute()
    metrics: dict[str, float | int | None] = {
        name: _number(computed[name]) for name in images.names
    }
    metrics.setdefault("lpips", None)
    metrics.update(
        re_px=_number(re_total["reprojection_error_px"]),
        re_pct=_number(re_total["reprojection_error_pct"]),
        re_pairs=int(re_total["pairs"] - re_total["failed_pairs"]),
        re_pairs_tried=int(re_total["pairs"]),
    )
    return SourceScore(metrics=metrics, by_pair=by_pair, first_views=first_views)


def ground_truth_source(batch_idx: int, batch: dict[str, Any]) -> Tensor:
    """The real views: the floor every metric can reach (RE: what matching noise leaves)."""
    return batch["images"]


def copy_reference_source(batch_idx: int, batch: dict[str, Any]) -> Tensor:
    """The reference photo as every view: a model that ignores the cameras."""
    ref = batch["ref_image"][:, :1]  # [B, 1, 3, H, W]
    return ref.expand_as(batch["images"]).contiguous()


def model_source(stage: PippoStage, sampling: SamplingConfig, device: torch.device) -> ViewSource:
    """Views sampled by a trained stage, seeded per batch as pippo-eval seeds them."""

    def generate(batch_idx: int, batch: dict[str, Any]) -> Tensor:
        seeded = with_seed(sampling, sampling.seed + batch_idx)
        return generate_views(stage, batch_to(batch, device), seeded)

    return generate


def load_job_stage(job_cfg: DictConfig, checkpoint: Path, device: torch.device) -> PippoStage:
    """A job's trained stage, rebuilt with the job's own compressor and stage class."""
    compressor = hydra.utils.instantiate(job_cfg.compressor)
    stage_class = hydra.utils.get_class(job_cfg.stage._target_)
    return load_stage(str(checkpoint), compressor, stage_class).to(device)
