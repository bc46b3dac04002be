"""`pippo-eval`'s figures: RE against azimuth and PSNR against view index as PNGs and W&B
plots, and a small HTML page with the images beside the numbers."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pippo_lightning.extras import MissingExtraError, require

log = logging.getLogger(__name__)

RE_VS_AZIMUTH = "re_vs_azimuth"
PSNR_VS_VIEW = "psnr_vs_view"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def re_by_azimuth(report: Mapping[str, Any]) -> list[tuple[float, float | None, float | None]]:
    """(azimuth°, generated RE %, ground-truth RE %) per view, sorted by azimuth."""
    per_view = report.get("per_view") or {}
    azimuths = per_view.get("azimuth_deg") or []
    generated = per_view.get("reprojection_error_pct") or [None] * len(azimuths)
    truth = per_view.get("gt_reprojection_error_pct") or [None] * len(azimuths)
    return sorted(zip(azimuths, generated, truth, strict=True), key=lambda row: row[0])


def eval_plots(report: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write the PNGs into ``out/plots``; {} (and one line naming the extra) without
    matplotlib, and no plot whose data the report lacks."""
    try:
        require("matplotlib", "pippo-eval's plots")
    except MissingExtraError as err:
        log.warning("%s; report.html is written without plots", err)
        return {}
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figures: dict[str, Path] = {}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    rows = re_by_azimuth(report)
    if rows and any(_finite(g) or _finite(t) for _, g, t in rows):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for column, label, style in ((1, "generated", "o-"), (2, "ground truth", "s--")):
            points = [(row[0], row[column]) for row in rows if _finite(row[column])]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=label, markersize=4)
        ax.set(xlabel="azimuth from the reference (°)", ylabel="reprojection error (% of side)")
        ax.set_title("3-D consistency against azimuth")
        ax.set_xlim(0, 360)
        ax.legend()
        ax.grid(alpha=0.3)
        figures[RE_VS_AZIMUTH] = _save(fig, out / "plots" / f"{RE_VS_AZIMUTH}.png")
    psnr = (report.get("per_view") or {}).get("psnr") or []
    if psnr:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(range(len(psnr)), psnr, "o-", markersize=4)
        ax.set(xlabel="view index", ylabel="PSNR (dB)", title="PSNR against view index")
        ax.grid(alpha=0.3)
        figures[PSNR_VS_VIEW] = _save(fig, out / "plots" / f"{PSNR_VS_VIEW}.png")
    return figures


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def write_html_report(
    report: Mapping[str, Any], out: Path, figures: Mapping[str, Path], grids: Sequence[Path]
) -> Path:
    """``out/report.html``: the metrics, the plots and the sample grids on one page (paths
    relative to ``out``, so the folder can be copied or served as it is)."""

    def image(path: Path, alt: str) -> str:
        source = html.escape(str(Path(path).resolve().relative_to(out.resolve())))
        return f'<figure><img src="{source}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'

    metrics = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>"
        for k, v in (report.get("metrics") or {}).items()
    )
    per_view = report.get("per_view") or {}
    names = list(per_view)
    count = max((len(v) for v in per_view.values()), default=0)
    view_rows = "".join(
        "<tr><td>{}</td>{}</tr>".format(
            k,
            "".join(
                f"<td>{_cell(per_view[n][k] if k < len(per_view[n]) else None)}</td>" for n in names
            ),
        )
        for k in range(count)
    )
    data = report.get("data") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pippo-eval report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}.side{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}"
        "img{max-width:100%}figure{margin:0}</style></head><body>",
        "<h1>pippo-eval report</h1>",
        f"<p>checkpoint <code>{_cell(report.get('checkpoint'))}</code>, step "
        f"{_cell(report.get('global_step'))}; {_cell(data.get('subjects'))} subject(s) of "
        f"split {_cell(data.get('split'))} x {_cell(data.get('views_per_subject'))} views at "
        f"{_cell(data.get('image_size'))} px</p>",
        "<div class='side'><table>" + metrics + "</table><div>",
        *(image(path, name.replace("_", " ")) for name, path in figures.items()),
        "</div></div>",
    ]
    if grids:
        parts += ["<h2>samples: reference | generated | ground truth</h2>"]
        parts += [image(path, Path(path).stem) for path in grids]
    if names:
        header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        parts += [f"<h2>per view</h2><table><tr><th>view</th>{header}</tr>{view_rows}</table>"]
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n")
    return path


def log_eval_plots(
    logger: Any, report: Mapping[str, Any], figures: Mapping[str, Path], step: int
) -> None:
    """The plots as W&B line charts (interactive) and as the PNGs, on a WandbLogger."""
    wandb = require("wandb", "W&B plots")
    payload: dict[str, Any] = {}
    rows = [(a, g, t) for a, g, t in re_by_azimuth(report) if _finite(g) or _finite(t)]
    if rows:
        table = wandb.Table(
            columns=["azimuth_deg", "re_pct", "gt_re_pct"],
            data=[[a, g if _finite(g) else None, t if _finite(t) else None] for a, g, t in rows],
        )
        # the generated views' error; the ground truth's where nothing generated matched
        y = "re_pct" if any(_finite(g) for _, g, _ in rows) else "gt_re_pct"
        payload[f"eval/{RE_VS_AZIMUTH}"] = wandb.plot.line(
            table, "azimuth_deg", y, title="reprojection error against azimuth"
        )
    psnr = (report.get("per_view") or {}).get("psnr") or []
    if psnr:
        table = wandb.Table(columns=["view", "psnr"], data=[[k, v] for k, v in enumerate(psnr)])
        payload[f"eval/{PSNR_VS_VIEW}"] = wandb.plot.line(
            table, "view", "psnr", title="PSNR against view index"
        )
    for name, path in figures.items():
        payload[f"eval/plots/{name}"] = wandb.Image(str(path))
    if payload:
        logger.experiment.log({**payload, "trainer/global_step": step})
