"""The metrics table of a `pippo-eval` report, shared by report.md and the Hub model card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: image metrics in the order they are reported: (key, label, digits)
IMAGE_METRICS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4))


def format_value(value: Any, digits: int = 2) -> str:
    """A number for a markdown table; None (no pair had enough matches) as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_table(report: Mapping[str, Any]) -> list[str]:
    """Markdown rows: reprojection error (generated vs the ground-truth floor) and image metrics.

    Without a checkpoint (ground truth scored alone) the generated column shows "-".
    """
    m = report.get("metrics", {})
    skipped = report.get("skipped", {})
    with_model = bool(report.get("checkpoint", True))

    def generated(key: str) -> str:
        return format_value(m.get(key)) if with_model else "-"

    def floor(key: str) -> str:
        return format_value(m.get(f"gt_{key}"))

    lines = [
        "| metric | generated | ground truth (floor) |",
        "|---|---|---|",
        f"| reprojection error, % of max(H, W) | {generated('reprojection_error_pct')} | "
        f"{floor('reprojection_error_pct')} |",
        f"| reprojection error, px | {generated('reprojection_error_px')} | "
        f"{floor('reprojection_error_px')} |",
        f"| failed / tried pairs | {generated('reprojection_failed_pairs')} / "
        f"{generated('reprojection_pairs')} | {floor('reprojection_failed_pairs')} / "
        f"{floor('reprojection_pairs')} |",
    ]
    for key, label, digits in IMAGE_METRICS:
        if key in m:
            lines.append(f"| {label} | {format_value(m[key], digits)} | - |")
        elif key in skipped:
            lines.append(f"| {label} | skipped: {skipped[key]} | - |")
    return lines
