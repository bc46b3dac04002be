"""Plots where people look (issue #17.7): RE per view against azimuth, PSNR per view index, as
PNGs and an HTML page with the images beside the numbers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pippo_lightning.metrics.eval_figures import (
    PSNR_VS_VIEW,
    RE_VS_AZIMUTH,
    eval_plots,
    re_by_azimuth,
    write_html_report,
)
from pippo_lightning.metrics.per_view import PerViewReprojectionError
from tests.test_reprojection import PERTURBATION_DEG, RESOLUTION, render_views, rotate_camera


@pytest.fixture(scope="module")
def arc_views() -> dict[str, torch.Tensor]:
    return render_views(RESOLUTION, RESOLUTION)


def per_view_metric(views: dict[str, torch.Tensor], **kwargs) -> PerViewReprojectionError:
    metric = PerViewReprojectionError(max_views=8)
    metric.update(**{**views, **kwargs})
    return metric


def test_per_view_error_adds_up_to_the_total_and_points_at_the_bad_camera(arc_views):
    num_views = arc_views["images"].shape[1]
    exact = per_view_metric(arc_views, gt_images=arc_views["images"])
    total = exact.compute()
    assert int(exact.view_point_count.sum()) == int(exact.point_count)
    assert float(exact.view_error_sum.sum()) == pytest.approx(float(exact.error_sum))
    figures = exact.per_view(num_views)
    assert set(figures) == {"reprojection_error_pct", "gt_reprojection_error_pct"}
    assert len(figures["reprojection_error_pct"]) == num_views
    # the mean of the per-view errors, weighted by points, is the total
    counts = exact.view_point_count[:num_views].double()
    values = torch.tensor([v or 0.0 for v in figures["reprojection_error_pct"]]).double()
    weighted = float((values * counts).sum() / counts.sum())
    assert weighted == pytest.approx(float(total["reprojection_error_pct"]), rel=1e-5)

    extrinsics = arc_views["extrinsics"].clone()
    extrinsics[0, 1] = rotate_camera(extrinsics[0, 1], PERTURBATION_DEG)
    perturbed = per_view_metric(arc_views, extrinsics=extrinsics).per_view(num_views)
    bad, good = perturbed["reprojection_error_pct"][1], figures["reprojection_error_pct"][1]
    assert bad > 3 * good


def test_too_many_views_for_the_per_view_slots_is_refused(arc_views):
    with pytest.raises(ValueError, match="max_views=1"):
        PerViewReprojectionError(max_views=1).update(**arc_views)


def fake_report(out: Path) -> dict:
    grid = out / "samples" / "batch_0000.png"
    grid.parent.mkdir(parents=True)
    import imageio.v3 as iio

    iio.imwrite(grid, np.zeros((8, 24, 3), np.uint8))
    return {
        "checkpoint": "run/checkpoints/last.ckpt",
        "global_step": 12,
        "data": {"split": "val", "subjects": 1, "views_per_subject": 4, "image_size": 32},
        "metrics": {"psnr": 17.25, "reprojection_error_pct": 1.5, "ssim": 0.5},
        "per_view": {
            "psnr": [17.0, 18.0, 16.5, 17.5],
            "reprojection_error_pct": [1.0, None, 2.0, 1.5],
            "gt_reprojection_error_pct": [0.5, 0.6, 0.4, 0.5],
            "azimuth_deg": [90.0, 0.0, 270.0, 180.0],
        },
    }, [grid]


def test_plots_and_html_report_put_the_images_beside_the_numbers(tmp_path: Path):
    report, grids = fake_report(tmp_path)
    assert [row[0] for row in re_by_azimuth(report)] == [0.0, 90.0, 180.0, 270.0]
    figures = eval_plots(report, tmp_path)
    assert set(figures) == {RE_VS_AZIMUTH, PSNR_VS_VIEW}
    for path in figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_html_report(report, tmp_path, figures, grids).read_text()
    assert 'src="plots/re_vs_azimuth.png"' in page and 'src="plots/psnr_vs_view.png"' in page
    assert 'src="samples/batch_0000.png"' in page
    assert "<th>psnr</th><td>17.25</td>" in page and "n/a" in page  # the unmatched view


def test_without_matplotlib_the_report_is_written_without_plots(tmp_path, monkeypatch, caplog):
    report, grids = fake_report(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING):
        assert eval_plots(report, tmp_path) == {}
    assert "pippo_lightning[plots]" in caplog.text
    assert "<img" in write_html_report(report, tmp_path, {}, grids).read_text()
