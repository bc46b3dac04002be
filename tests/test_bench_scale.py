"""bench-scale: the expected-curve fit (pure) and the grid code path on one micro point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pippo_lightning.cli.bench_scale import fit_cost_model, main, predict, tokens


def test_tokens_count_targets_and_reference() -> None:
    # 128 px -> 16x16 latents -> 8x8 patches of 2; 4 targets + 1 reference
    assert tokens(4, 128) == 5 * 64
    assert tokens(16, 256) == 17 * 256


def test_fit_recovers_constant_linear_and_quadratic_terms() -> None:
    t = [160, 320, 640, 1280, 2560, 5120]
    truth = [0.05, 2e-4, 3e-8]
    values = predict(truth, t)
    fitted = fit_cost_model(t, list(values), quadratic=True)
    assert np.allclose(fitted, truth, rtol=1e-6)
    assert np.allclose(fit_cost_model(t, list(predict([900.0, 0.25], t)), False), [900.0, 0.25])


def test_fit_never_returns_a_negative_share() -> None:
    # purely linear data with noise would otherwise get a small negative T^2 term
    t = [100, 200, 400, 800]
    values = [1.0 + 0.01 * x for x in t]
    values[-1] -= 0.5
    fitted = fit_cost_model(t, values, quadratic=True)
    assert all(c >= 0 for c in fitted)
    assert fitted[2] == 0.0


@pytest.mark.slow
def test_grid_writes_json_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = main(
        [
            "--out",
            str(tmp_path),
            "--views",
            "2",
            "3",
            "--resolutions",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]
    )
    assert [p["views"] for p in report["points"]] == [2, 3]
    saved = json.loads((tmp_path / "bench_scale.json").read_text())
    assert saved["points"][0]["step_median_s"] > 0 and saved["points"][0]["peak_rss_mb"] > 0
    assert "| views |" in (tmp_path / "bench_scale.md").read_text()
    assert (tmp_path / "bench_scale.png").read_bytes()[:4] == b"\x89PNG"
