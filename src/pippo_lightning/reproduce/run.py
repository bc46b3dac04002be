"""Evaluate every job of an ablation multirun on the same held-out subjects and write the report.

A run directory (``outputs/reproduce/<run>``) holds the multirun's jobs under ``jobs/<n>/`` (each
with its ``.hydra/config.yaml`` and ``checkpoints/last.ckpt``); :func:`reproduce_report` scores
them all with the settings of their preset (the ``reproduce`` node of their config), the two
rows that need no training, and the full model's attention-biasing study, then writes
``results.json``, ``results.md``, ``figures/*.png`` and one W&B run next to ``jobs/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pippo_lightning.checkpoints.reading import checkpoint_step
from pippo_lightning.data.schema import SampleError
from pippo_lightning.errors import PippoError
from pippo_lightning.inference.device import pick_device
from pippo_lightning.inference.pipeline import sampling_config
from pippo_lightning.reproduce.evaluation import (
    SourceScore,
    copy_reference_source,
    ground_truth_source,
    held_out_loader,
    load_job_stage,
    model_source,
    score_source,
)
from pippo_lightning.reproduce.report import (
    VARIANTS,
    build_results,
    comparison_grid,
    log_to_wandb,
    plot_re_by_azimuth,
    with_floor,
    write_results,
)

log = logging.getLogger(__name__)

#: Keys of a job's config that must agree across the jobs of one report.
SHARED_KEYS = (
    "image_size",
    "num_views",
    "data",
    "reproduce.eval_views",
    "reproduce.eval_view_step_deg",
    "trainer.max_steps",
)


class ReproduceError(PippoError):
    """The run directory cannot be reported on (no jobs, jobs that disagree, ...)."""


@dataclass
class Job:
    """One trained variant of the multirun."""

    variant: str
    seed: int
    directory: Path
    cfg: DictConfig
    checkpoint: Path | None


def find_jobs(jobs_dir: Path) -> list[Job]:
    """Every job under ``jobs_dir`` (``<n>/.hydra/config.yaml``), sorted by variant and seed."""
    configs = sorted(jobs_dir.glob("*/.hydra/config.yaml"))
    if not configs:
        raise ReproduceError(
            f"{jobs_dir}: no multirun jobs (*/.hydra/config.yaml); run the multirun first "
            "(make reproduce) or pass the run directory that holds jobs/"
        )
    jobs = []
    for path in configs:
        cfg = OmegaConf.load(path)
        variant = OmegaConf.select(cfg, "reproduce.variant")
        if variant not in VARIANTS:
            raise ReproduceError(
                f"{path}: reproduce.variant={variant!r}; expected one of {list(VARIANTS)} "
                "(was the job trained with experiment=ablation/<variant>?)"
            )
        directory = path.parent.parent
        checkpoint = directory / "checkpoints" / "last.ckpt"
        jobs.append(
            Job(
                variant, int(cfg.seed), directory, cfg, checkpoint if checkpoint.is_file() else None
            )
        )
    _check_agreement(jobs)
    return sorted(jobs, key=lambda j: (VARIANTS.index(j.variant), j.seed))


def _resolved(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _check_agreement(jobs: list[Job]) -> None:
    first = jobs[0]
    for job in jobs[1:]:
        for key in SHARED_KEYS:
            if _resolved(job.cfg, key) != _resolved(first.cfg, key):
                raise ReproduceError(
                    f"jobs {first.directory} and {job.directory} differ in {key}: a report "
                    "compares variants trained on the same data, sizes and steps only"
                )
    seen: set[tuple[str, int]] = set()
    for job in jobs:
        if (job.variant, job.seed) in seen:
            raise ReproduceError(f"two jobs train {job.variant} with seed {job.seed}")
        seen.add((job.variant, job.seed))


def reproduce_report(run_dir: Path, device: str = "auto", wandb: bool = True) -> dict[str, Any]:
    """Score every job of ``run_dir/jobs`` and write the report into ``run_dir``."""
    jobs = find_jobs(run_dir / "jobs")
    cfg = jobs[0].cfg
    settings = _resolved(cfg, "reproduce")
    image_size, train_views = int(cfg.image_size), int(cfg.num_views)
    eval_views = int(settings["eval_views"])
    data = _resolved(cfg, "data")
    torch_device = pick_device(device)

    def loader(views: int) -> Any:
        return held_out_loader(
            data,
            image_size,
            views,
            settings["max_subjects"],
            seed=int(settings["sampling"]["seed"]),
            batch_size=int(settings["batch_size"]),
            view_step_deg=settings.get("eval_view_step_deg"),
        )

    def score(source: Any, views_loader: Any) -> SourceScore:
        return score_source(source, views_loader, settings["reprojection"], settings["lpips"])

    main_loader = loader(eval_views)
    truth = score(ground_truth_source, main_loader)
    copied = score(copy_reference_source, main_loader)
    rows: dict[str, dict[int, dict[str, Any]]] = {
        "ground_truth": {0: with_floor(truth.metrics, truth.metrics)},
        "copy_reference": {0: with_floor(copied.metrics, truth.metrics)},
    }
    by_azimuth = {"ground_truth": truth.by_pair, "copy_reference": copied.by_pair}
    grid_rows = {"copy_reference": copied.first_views}
    missing = []
    for job in jobs:
        if job.checkpoint is None:
            log.warning(
                "%s (%s, seed %d): no checkpoint; left null", job.directory, job.variant, job.seed
            )
            missing.append(str(job.directory))
            continue
        stage = load_job_stage(job.cfg, job.checkpoint, torch_device)
        main_sampling = {
            **settings["sampling"],
            "attention_gamma": settings["eval_attention_gamma"],
        }
        sampling = sampling_config(stage, main_sampling)
        result = score(model_source(stage, sampling, torch_device), main_loader)
        rows.setdefault(job.variant, {})[job.seed] = with_floor(result.metrics, truth.metrics)
        # figures show each variant's first (lowest) training seed
        by_azimuth.setdefault(job.variant, result.by_pair)
        grid_rows.setdefault(job.variant, result.first_views)
        log.info("%s seed %d: %s", job.variant, job.seed, result.metrics)

    biasing = attention_biasing_study(jobs, settings, train_views, loader, score, torch_device)
    run_settings = {
        "image_size": image_size,
        "train_views": train_views,
        "eval_views": eval_views,
        "eval_view_step_deg": settings.get("eval_view_step_deg"),
        "subjects": len(main_loader.dataset),
        "max_steps": int(cfg.trainer.max_steps),
        "seeds": sorted({job.seed for job in jobs}),
        "attention_gamma": settings["attention_gamma"],
        "eval_attention_gamma": settings["eval_attention_gamma"],
        "sampling": settings["sampling"],
        "reprojection": settings["reprojection"],
        "studio": data.get("synthetic"),
        # the steps each job reached (trainer.max_time may stop a job early on a slow machine)
        "jobs": [
            {
                "directory": str(job.directory),
                "variant": job.variant,
                "seed": job.seed,
                "global_step": checkpoint_step(str(job.checkpoint)) if job.checkpoint else None,
            }
            for job in jobs
        ],
        "missing_checkpoints": missing,
    }
    results = build_results(run_dir.name, run_settings, rows, biasing, by_azimuth)
    figures = {
        "re_by_azimuth": plot_re_by_azimuth(by_azimuth, run_dir / "figures" / "re_by_azimuth.png"),
    }
    ordered = {
        k: grid_rows[k] for k in (*VARIANTS, "copy_reference") if grid_rows.get(k) is not None
    }
    ordered["ground_truth"] = truth.first_views
    reference = next(iter(main_loader))["ref_image"][0, :1]  # [1, 3, H, W]
    figures["subject_grid"] = comparison_grid(
        ordered, reference, run_dir / "figures" / "subject_grid.png"
    )
    results["figures"] = {name: str(path.relative_to(run_dir)) for name, path in figures.items()}
    results["settings"]["subject_grid_rows"] = ["reference | views", *ordered]
    json_path, md_path = write_results(run_dir, results)
    if wandb:
        group = str(OmegaConf.select(cfg, "reproduce.group") or run_dir.name)
        log_to_wandb(results, figures, run_dir, group)
    log.info("written: %s, %s", json_path, md_path)
    return results


def attention_biasing_study(
    jobs: list[Job],
    settings: dict[str, Any],
    train_views: int,
    loader: Any,
    score: Any,
    device: torch.device,
) -> dict[str, Any]:
    """The full model (its lowest seed) at k x the trained views, biasing off and on."""
    full = next((job for job in jobs if job.variant == "full" and job.checkpoint), None)
    factors = settings.get("bias_view_factors") or []
    if full is None or not factors:
        return {}
    stage = load_job_stage(full.cfg, full.checkpoint, device)
    study: dict[str, Any] = {}
    for factor in factors:
        views = int(factor) * train_views
        key = f"{factor}x"
        try:
            views_loader = loader(views)
            next(iter(views_loader))
        except SampleError as err:  # the dome has fewer cameras than asked for
            study[key] = {"views": views, "skipped": str(err)}
            log.warning("attention biasing at %s views skipped: %s", views, err)
            continue
        truth = score(ground_truth_source, views_loader)
        entry: dict[str, Any] = {"views": views, "seed": full.seed, "ground_truth": truth.metrics}
        for mode, gamma in (("off", None), ("on", settings["attention_gamma"])):
            sampling = sampling_config(stage, {**settings["sampling"], "attention_gamma": gamma})
            result = score(model_source(stage, sampling, device), views_loader)
            entry[mode] = with_floor(result.metrics, truth.metrics)
            entry[mode]["attention_scale"] = stage.attention_scale(sampling, views)
        study[key] = entry
    return study
