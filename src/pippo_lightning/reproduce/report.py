"""The ablation report: results.json (one schema, nulls where unmeasured), results.md (one table,
variants x metrics), the figures and one W&B run with a summary table.

results.json::

    {"run": str, "settings": {...},
     "variants": {name: {"psnr", "ssim", "lpips", "re_px", "re_pct", "re_pairs",
                         "re_pairs_tried", "gt_re_px", "gt_re_pct", "gt_re_pairs",
                         "seeds": [int], "spread": {metric: std over seeds or null},
                         "per_seed": {seed: {metric: value}}}},
     "attention_biasing": {"2x": {"views": int, "off": {...}, "on": {...}, "ground_truth": {...}}},
     "re_by_azimuth": {name: [{"azimuth_deg", "re_px", "matched", "tried"}]},
     "figures": {name: relative path}}

``variants`` always holds every name of :data:`VARIANTS` and :data:`BASELINES`; a metric that
could not be measured (a variant not trained, a pair set that never matched, LPIPS without
local weights, the PSNR of the ground truth against itself) is ``null``, never left out.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from pippo_lightning.callbacks.images import view_grid, write_image_atomic

#: Trained variants, in report order, and the rows that need no training.
VARIANTS: tuple[str, ...] = ("full", "no_anchor", "no_plucker", "no_controlmlp")
BASELINES: tuple[str, ...] = ("copy_reference", "ground_truth")
#: Per-row metrics: image metrics, the row's own RE, and the ground-truth floor of its cameras.
METRICS: tuple[str, ...] = (
    "psnr",
    "ssim",
    "lpips",
    "re_px",
    "re_pct",
    "re_pairs",
    "re_pairs_tried",
    "gt_re_px",
    "gt_re_pct",
    "gt_re_pairs",
)
#: results.md columns: (metric, label, digits)
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 3),
    ("lpips", "LPIPS", 3),
    ("re_px", "RE (px)", 2),
    ("re_pct", "RE (% width)", 2),
    ("re_pairs", "matched pairs", 0),
    ("gt_re_px", "GT floor (px)", 2),
)


class ResultsSchemaError(ValueError):
    """A results.json that does not follow the schema of this module's docstring."""


def _finite(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


def aggregate_seeds(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the rows of several training seeds: the mean of every metric over the seeds
    that measured it (null if none did) and its spread (population std; null below 2 values)."""
    row: dict[str, Any] = {}
    spread: dict[str, float | None] = {}
    for key in METRICS:
        values = [v for v in (_finite(m.get(key)) for m in per_seed.values()) if v is not None]
        mean = statistics.fmean(values) if values else None
        if mean is not None and key in ("re_pairs", "re_pairs_tried", "gt_re_pairs"):
            mean = round(mean, 2)
        row[key] = mean
        spread[key] = statistics.pstdev(values) if len(values) > 1 else None
    row["seeds"] = sorted(int(s) for s in per_seed)
    row["spread"] = spread
    row["per_seed"] = {str(s): {k: m.get(k) for k in METRICS} for s, m in sorted(per_seed.items())}
    return row


def empty_row() -> dict[str, Any]:
    """A variant that was not measured: every metric null."""
    return aggregate_seeds({})


def with_floor(metrics: Mapping[str, Any], floor: Mapping[str, Any]) -> dict[str, Any]:
    """A source's metrics with the ground truth's RE on the same cameras as ``gt_re_*``."""
    out = {key: metrics.get(key) for key in METRICS}
    out.update(
        gt_re_px=floor.get("re_px"),
        gt_re_pct=floor.get("re_pct"),
        gt_re_pairs=floor.get("re_pairs"),
    )
    return out


def build_results(
    run: str,
    settings: Mapping[str, Any],
    variants: Mapping[str, Mapping[int, Mapping[str, Any]]],
    attention_biasing: Mapping[str, Any] | None = None,
    re_by_azimuth: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """results.json: ``variants`` maps a name to {training seed: metrics}; unknown names are
    refused, missing ones become rows of nulls."""
    unknown = sorted(set(variants) - set(VARIANTS) - set(BASELINES))
    if unknown:
        raise ResultsSchemaError(
            f"unknown variant(s) {unknown}; known: {list(VARIANTS + BASELINES)}"
        )
    rows = {
        name: aggregate_seeds(variants[name]) if variants.get(name) else empty_row()
        for name in VARIANTS + BASELINES
    }
    return {
        "run": run,
        "settings": dict(settings),
        "variants": rows,
        "attention_biasing": dict(attention_biasing or {}),
        "re_by_azimuth": {k: list(v) for k, v in (re_by_azimuth or {}).items()},
        "figures": {},
    }


def check_results(results: Mapping[str, Any]) -> None:
    """Raise :class:`ResultsSchemaError` naming the first thing that departs from the schema."""
    for key in ("run", "settings", "variants", "attention_biasing", "re_by_azimuth", "figures"):
        if key not in results:
            raise ResultsSchemaError(f"results.json: missing top-level key {key!r}")
    rows = results["variants"]
    missing = [name for name in VARIANTS + BASELINES if name not in rows]
    if missing:
        raise ResultsSchemaError(f"results.json: variants {missing} missing")
    for name, row in rows.items():
        for key in METRICS:
            if key not in row:
                raise ResultsSchemaError(f"results.json: variants.{name} has no {key!r}")
            value = row[key]
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ResultsSchemaError(
                    f"results.json: variants.{name}.{key} = {value!r}: expected a finite "
                    "number or null"
                )


def _cell(row: Mapping[str, Any], key: str, digits: int) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if key == "re_pairs" and row.get("re_pairs_tried") is not None:
        text += f" / {row['re_pairs_tried']:.0f}"
    spread = (row.get("spread") or {}).get(key)
    if spread is not None and key != "re_pairs":
        text += f" ± {spread:.{digits}f}"
    return text


def markdown(results: Mapping[str, Any]) -> str:
    """results.md: the variants x metrics table, then attention biasing, then the settings."""
    s = results["settings"]
    lines = [
        f"# Ablations on the synthetic studio ({results['run']})",
        "",
        f"{s.get('subjects', '?')} held-out subject(s), {s.get('eval_views', '?')} views "
        f"{_spacing(s.get('eval_view_step_deg'))} at "
        f"{s.get('image_size', '?')} px (trained on {s.get('train_views', '?')} views, "
        f"{s.get('max_steps', '?')} steps, training seeds {s.get('seeds', '?')}); mean ± std "
        "over training seeds. RE: reprojection error of SIFT matches between neighbouring "
        "views; matched pairs / tried; GT floor: the ground truth's RE on the same cameras.",
        "",
        "| variant | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, row in results["variants"].items():
        cells = " | ".join(_cell(row, key, digits) for key, _, digits in COLUMNS)
        lines.append(f"| {name} | {cells} |")
    biasing = results.get("attention_biasing") or {}
    if biasing:
        lines += [
            "",
            f"## Attention biasing (full model, gamma {s.get('attention_gamma')})",
            "",
            "| views | biasing | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 2) + "|",
        ]
        for factor, entry in biasing.items():
            for mode in ("off", "on"):
                if mode in entry:
                    row = with_floor(entry[mode], entry.get("ground_truth", {}))
                    cells = " | ".join(_cell(row, key, digits) for key, _, digits in COLUMNS)
                    lines.append(f"| {entry['views']} ({factor}) | {mode} | {cells} |")
    lines += [
        "",
        "n/a: not measured (no pair matched, LPIPS without local weights, the PSNR of the "
        "ground truth against itself, or a variant that was not trained).",
    ]
    return "\n".join(lines) + "\n"


def plot_re_by_azimuth(
    re_by_azimuth: Mapping[str, Sequence[Mapping[str, Any]]], path: Path
) -> Path:
    """RE (px) of each view pair against the pair's azimuth from the reference, per variant."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    highest = 0.0
    for name, pairs in re_by_azimuth.items():
        points = sorted((p["azimuth_deg"], p["re_px"]) for p in pairs if p.get("re_px") is not None)
        if points:
            xs, ys = zip(*points)
            highest = max(highest, *ys)
            style = "k--" if name == "ground_truth" else "-o"
            ax.plot(xs, ys, style, label=name, markersize=3)
    ax.set_xlabel("azimuth of the view pair from the reference (deg)")
    ax.set_ylabel("reprojection error (px)")
    ax.set_xlim(0, 360)
    ax.set_ylim(0, 1.15 * highest if highest > 0 else 1.0)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def comparison_grid(rows: Mapping[str, Tensor], reference: Tensor | None, path: Path) -> Path:
    """One held-out subject: a row of views [NV, 3, H, W] per variant (reference first, ground
    truth last), in the order given."""
    stacks = []
    for views in rows.values():
        stacks.append([reference, views] if reference is not None else [views])
    return write_image_atomic(path, view_grid(stacks))


def summary_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the W&B summary table: one row per variant."""
    columns = ["variant", *METRICS]
    data = [[name, *(row.get(key) for key in METRICS)] for name, row in results["variants"].items()]
    return columns, data


def write_results(out_dir: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """results.json and results.md (atomically, after a schema check)."""
    check_results(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (
        ("results.json", json.dumps(results, indent=2, allow_nan=False) + "\n"),
        ("results.md", markdown(results)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
        paths.append(out_dir / name)
    return paths[0], paths[1]


def log_to_wandb(
    results: Mapping[str, Any], figures: Mapping[str, Path], save_dir: Path, group: str
) -> Path | None:
    """One W&B run (offline unless credentials are set) in ``group``: the summary table, the
    figures and every variant's metrics in the run summary. Returns the run's directory."""
    from pippo_lightning.callbacks.loggers import wandb_logger

    logger = wandb_logger(save_dir, name=f"report_{results['run']}", group=group, job_type="report")
    columns, data = summary_table(results)
    logger.log_table("reproduce/results", columns=columns, data=data)
    for name, path in figures.items():
        logger.log_image(f"reproduce/{name}", images=[str(path)])
    summary = {
        f"reproduce/{variant}/{key}": row[key]
        for variant, row in results["variants"].items()
        for key in METRICS
        if row.get(key) is not None
    }
    logger.experiment.summary.update(summary)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    return run_dir


def _spacing(step_deg: float | None) -> str:
    """How the evaluated views are spaced, in words."""
    if step_deg is None:
        return "evenly around the subject"
    return f"{float(step_deg):g} degrees apart from the reference azimuth"
