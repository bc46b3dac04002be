"""`pippo-eval`: score a checkpoint on held-out subjects: 3-D consistency and image fidelity.

For every subject of the split (the studio's validation subjects never appear in training) the
stage generates the dataset's target views at a fixed seed; in the same pass
:class:`~pippo_lightning.metrics.ReprojectionError` scores the generated views *and* the ground
truth of the same cameras (the floor set by matching noise), and
:class:`~pippo_lightning.metrics.image.ImageMetrics` scores PSNR / SSIM (LPIPS when its weights
are local). ``report.json`` and ``report.md`` go to the run directory, the figures to W&B.
``gt_only=true`` skips the model and measures the floor of a dataset alone."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader

from pippo_lightning.callbacks.images import view_grid, write_image_atomic
from pippo_lightning.callbacks.tracking import (
    announce_runs,
    link_eval_to_training_run,
    use_training_model_artifact,
)
from pippo_lightning.checkpoints.reading import checkpoint_step
from pippo_lightning.cli.common import (
    CONFIG_DIR,
    check_overrides,
    guarded,
    instantiate_group,
    resolved_config,
)
from pippo_lightning.diffusion.sampling import SamplerFactory, sampler_name
from pippo_lightning.inference.device import autocast, pick_device
from pippo_lightning.inference.loading import eval_loader, load_model, pin_sizes
from pippo_lightning.inference.pipeline import (
    batch_to,
    generate_views,
    sampling_config,
    with_seed,
)
from pippo_lightning.metrics.eval_figures import eval_plots, log_eval_plots, write_html_report
from pippo_lightning.metrics.image import ImageMetrics, per_view_psnr, per_view_ssim
from pippo_lightning.metrics.per_view import PerViewReprojectionError
from pippo_lightning.metrics.report import format_value, metrics_table
from pippo_lightning.metrics.reprojection import ReprojectionError, reprojection_log_name
from pippo_lightning.progress import track
from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.config import ConfigError, SamplingConfig

#: ReprojectionError result keys, without and with the ground-truth prefix.
RE_KEYS = ("reprojection_error_pct", "reprojection_error_px", "pairs", "failed_pairs")


@dataclass
class EvalResult:
    """The report (as written to report.json) and where it was written."""

    report: dict[str, Any]
    output_dir: Path
    json_path: Path
    markdown_path: Path
    grids: list[Path] = field(default_factory=list)


def evaluate(cfg: DictConfig) -> EvalResult:
    """Generate and score every subject of the split; write and log the report."""
    start = time.perf_counter()
    device = pick_device(cfg.device)
    stage, compressor = load_model(cfg, device)
    image_size, num_views = pin_sizes(cfg, stage)
    loader = eval_loader(cfg, image_size, num_views)
    sampling = (
        sampling_config(stage, OmegaConf.to_container(cfg.sampling, resolve=True))
        if stage
        else None
    )
    sampler: SamplerFactory = hydra.utils.instantiate(cfg.sampler)
    if stage is not None:
        stage.build_sampler(sampling, sampler)  # refuse e.g. eta > 0 with an ODE solver at once
    out = Path(cfg.paths.output_dir)

    reprojection: ReprojectionError = hydra.utils.instantiate(cfg.reprojection)
    images = ImageMetrics(lpips=cfg.lpips)
    rows, grids = [], []
    batches = track(enumerate(loader), "pippo-eval", len(loader))
    azimuths: list[float] = []  # of the first subject's views: the x axis of RE vs azimuth
    for batch_idx, batch in batches:
        target = batch["images"]  # [B, NV, 3, H, W] ground truth
        if batch_idx == 0:
            azimuths = [float(a) for a in batch["azimuth_deg"][0]]
        per_batch: ReprojectionError = hydra.utils.instantiate(cfg.reprojection)
        row: dict[str, Any] = {"subjects": [int(i) for i in batch["index"]]}
        if stage is None:
            per_batch.update(target, batch["intrinsics"], batch["extrinsics"])
        else:
            # Seed per batch: every subject gets its own noise, the same in every evaluation.
            seeded = with_seed(sampling, sampling.seed + batch_idx)
            with autocast(device, cfg.precision):
                generated = generate_views(
                    stage, batch_to(batch, device), seeded, cfg.progress, sampler=sampler
                )
            generated = generated.float().cpu()
            per_batch.update(generated, batch["intrinsics"], batch["extrinsics"], gt_images=target)
            images.update(generated, target)
            row["psnr"] = float(per_view_psnr(generated, target).mean())
            row["ssim"] = float(per_view_ssim(generated, target).mean())
            if cfg.save_grids:
                grids.append(save_grid(out, batch_idx, batch, generated))
        row.update(reprojection_figures(per_batch.compute(), ground_truth_only=stage is None))
        reprojection.merge_state(per_batch)
        rows.append(row)

    report = build_report(cfg, stage, sampling, reprojection, images, rows, loader, image_size)
    if report["sampling"] is not None:
        report["sampling"]["sampler"] = sampler_name(sampler)
    report["compressor"] = compressor
    report["seconds"] = time.perf_counter() - start
    report["device"] = str(device)
    if isinstance(reprojection, PerViewReprojectionError):
        report["per_view"].update(reprojection.per_view(report["data"]["views_per_subject"]))
    if azimuths:
        report["per_view"]["azimuth_deg"] = azimuths
    json_path, md_path = write_report(out, report)
    # issue #17: plots where people look (PNGs, W&B charts) and report.html beside the numbers
    figures = eval_plots(report, out)
    html_path = write_html_report(report, out, figures, grids)
    log_report(cfg, report, grids, figures)
    print(markdown_report(report))
    print(f"written: {json_path}, {md_path} and {html_path}")
    return EvalResult(report, out, json_path, md_path, grids)


def save_grid(out: Path, batch_idx: int, batch: dict[str, Any], generated: Tensor) -> Path:
    """reference | generated | ground truth, one row per subject of the batch."""
    rows = [
        [batch["ref_image"][i], generated[i], batch["images"][i]] for i in range(len(generated))
    ]
    return write_image_atomic(out / "samples" / f"batch_{batch_idx:04d}.png", view_grid(rows))


def _number(value: Tensor | float | int) -> float | int | None:
    """A JSON-safe number: NaN (nothing matched) becomes None."""
    value = value.item() if isinstance(value, Tensor) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reprojection_figures(result: dict[str, Tensor], ground_truth_only: bool) -> dict[str, Any]:
    """ReprojectionError.compute() as report keys: generated under their own names, ground
    truth with ``gt_`` (in ``gt_only`` mode the un-prefixed result *is* the ground truth)."""
    figures = {}
    for key in RE_KEYS:
        if ground_truth_only:
            figures[f"gt_{reprojection_log_name(key)}"] = _number(result[key])
        else:
            figures[reprojection_log_name(key)] = _number(result[key])
            figures[reprojection_log_name(f"gt_{key}")] = _number(result[f"gt_{key}"])
    return figures


def build_report(
    cfg: DictConfig,
    stage: PippoStage | None,
    sampling: SamplingConfig | None,
    reprojection: ReprojectionError,
    images: ImageMetrics,
    rows: list[dict[str, Any]],
    loader: DataLoader,
    image_size: int,
) -> dict[str, Any]:
    if not rows:
        raise ConfigError(f"split {cfg.split!r} has no subjects to evaluate")
    with warnings.catch_warnings():
        # The totals were filled by merge_state (no update() of their own), which torchmetrics
        # mistakes for "compute before update".
        warnings.filterwarnings("ignore", message=".*before the ``update`` method.*")
        totals = reprojection.compute()
    metrics = reprojection_figures(totals, ground_truth_only=stage is None)
    per_view: dict[str, list[float]] = {}
    if stage is not None:
        computed = images.compute()
        metrics.update({name: _number(computed[name]) for name in images.names})
        per_view = images.per_view()
    dataset = loader.dataset.dataset  # the MultiViewDataset under the Subset
    ckpt = None if stage is None else str(cfg.ckpt)
    return {
        "checkpoint": ckpt,
        "global_step": checkpoint_step(ckpt) if ckpt else None,
        "data": {
            "root": str(Path(dataset.files[0]).parent),
            "split": cfg.split,
            "subjects": len(loader.dataset),
            "views_per_subject": dataset.num_views,
            "image_size": image_size,
        },
        "trained_views": stage.num_views if stage else None,
        "attention_scale": stage.attention_scale(sampling, dataset.num_views) if stage else None,
        "sampling": dataclasses.asdict(sampling) if sampling else None,
        "reprojection_settings": {
            key: cfg.reprojection[key]
            for key in ("matcher", "pairs", "min_matches", "min_confidence", "verify")
            if key in cfg.reprojection
        },
        "metrics": metrics,
        "per_view": per_view,
        "per_subject": rows,
        "skipped": dict(images.skipped) if stage is not None else {"model": "gt_only=true"},
    }


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str, allow_nan=False) + "\n")
    md_path.write_text(markdown_report(report) + "\n")
    return json_path, md_path


def markdown_report(report: dict[str, Any]) -> str:
    data = report["data"]
    sampling = report["sampling"]
    lines = ["# pippo-eval report", ""]
    if report["checkpoint"]:
        lines.append(f"- checkpoint: `{report['checkpoint']}` (step {report['global_step']})")
    lines.append(
        f"- data: `{data['root']}`: {data['subjects']} subject(s) x {data['views_per_subject']} "
        f"views at {data['image_size']} px"
    )
    if sampling:
        lines.append(
            f"- sampling: {sampling['num_steps']} {sampling.get('sampler', 'ddim')} steps, "
            f"CFG {sampling['cfg_scale']} "
            f"({sampling['cfg_schedule']}), attention gamma {sampling['attention_gamma']}, "
            f"seed {sampling['seed']} (+ batch index)"
        )
    settings = report["reprojection_settings"]
    lines += [
        f"- reprojection: matcher {settings.get('matcher')}, {settings.get('pairs')} pairs, "
        f">= {settings.get('min_matches')} matches per pair, verification "
        f"{settings.get('verify', 'none')}",
        "",
        *metrics_table(report),
    ]
    if report["per_view"]:
        names = list(report["per_view"])
        lines += ["", "| view | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k in range(len(report["per_view"][names[0]])):
            values = " | ".join(format_value(report["per_view"][n][k], 3) for n in names)
            lines.append(f"| {k} | {values} |")
    lines += [
        "",
        "n/a: no pair had enough matches. The ground-truth column scores the real views of the "
        "same cameras in the same pass: the error the matcher's own mistakes leave.",
    ]
    return "\n".join(lines)


def log_report(
    cfg: DictConfig,
    report: dict[str, Any],
    grids: list[Path],
    figures: dict[str, Path] | None = None,
) -> None:
    """Figures to every configured logger: scalars, a per-subject table and summary on W&B."""
    # issue #17: into the training run (resumed by id) or linked to it, not an unrelated run
    training_run = link_eval_to_training_run(cfg, report.get("checkpoint"))
    resumed = training_run is not None and cfg.get("wandb_link", "resume") == "resume"
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    scalars = {f"eval/{k}": v for k, v in report["metrics"].items() if v is not None}
    step = report["global_step"] or 0
    for logger in loggers:
        # a resumed training run keeps its own config; the evaluation's goes beside it
        logger.log_hyperparams({"eval_config" if resumed else "config": resolved_config(cfg)})
    announce_runs(loggers)
    if training_run is not None and not resumed:
        use_training_model_artifact(loggers, training_run)
    for logger in loggers:
        logger.log_metrics(scalars, step=step)
        if isinstance(logger, WandbLogger):
            columns = sorted({k for row in report["per_subject"] for k in row})
            data = [
                [json.dumps(row.get(c)) if c == "subjects" else row.get(c) for c in columns]
                for row in report["per_subject"]
            ]
            logger.log_table("eval/per_subject", columns=columns, data=data, step=step)
            if grids:
                logger.log_image(
                    "eval/samples",
                    images=[str(grids[0])],
                    step=step,
                    caption=["reference | generated | ground truth"],
                )
            log_eval_plots(logger, report, figures or {}, step)
            logger.experiment.summary.update(scalars)
            logger.experiment.finish()
        else:
            logger.finalize("success")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@guarded
def _main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main() -> None:
    check_overrides("evaluate")
    _main()


if __name__ == "__main__":
    main()
