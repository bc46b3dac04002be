"""PSNR / SSIM per view and averaged, LPIPS only when it can run offline (never downloaded)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from pippo_lightning.metrics import image as image_metrics
from pippo_lightning.metrics.image import (
    ImageMetrics,
    lpips_availability,
    per_view_psnr,
    per_view_ssim,
)


def views(seed: int, shape: tuple[int, ...] = (2, 3, 3, 16, 16)) -> torch.Tensor:
    """Random views [B, NV, 3, H, W] in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 2 - 1


@pytest.fixture
def no_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend torchvision is absent, whatever this machine has."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        image_metrics.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchvision" else real(name, *a),
    )


def test_psnr_per_view_matches_the_definition():
    target = views(0)
    noisy = (target + 0.1 * views(1)).clamp(-1, 1)
    psnr = per_view_psnr(noisy, target)
    assert psnr.shape == (2, 3)
    mse = (((noisy + 1) / 2 - (target + 1) / 2) ** 2).mean(dim=(2, 3, 4))
    assert torch.allclose(psnr, 10 * torch.log10(1 / mse), atol=1e-4)


def test_ssim_is_one_for_identical_views_and_lower_for_noise():
    target = views(0)
    assert torch.allclose(per_view_ssim(target, target), torch.ones(2, 3), atol=1e-5)
    assert (per_view_ssim(views(1), target) < 0.2).all()


def test_ssim_inside_a_bf16_autocast_region_is_the_fp32_ssim():
    # validation steps run inside the trainer's bf16 autocast: SSIM must not follow it
    smooth = torch.nn.functional.avg_pool2d(views(0, (6, 3, 32, 32)), 5, 1, 2).reshape(
        2, 3, 3, 32, 32
    )
    target = smooth * 0.2 + 0.6  # bright, low-contrast views: bf16 variances cancel to noise
    noisy = (target + 0.05 * views(1, target.shape)).clamp(-1, 1)
    reference = per_view_ssim(noisy, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = per_view_ssim(noisy, target)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, atol=1e-5, rtol=0)


def test_value_range_zero_one_gives_the_same_scores():
    a, b = views(0), views(1)
    assert torch.allclose(per_view_psnr(a, b), per_view_psnr((a + 1) / 2, (b + 1) / 2, (0, 1)))


def test_collection_averages_all_views_and_each_view_index(no_lpips):
    metric = ImageMetrics()
    first, second = (views(0), views(1)), (views(2), views(3))
    for images, target in (first, second):
        metric.update(images, target)
    result = metric.compute()
    psnr = torch.cat([per_view_psnr(*first), per_view_psnr(*second)])  # [4, 3]
    assert torch.allclose(result["psnr"], psnr.mean())
    for k in range(3):
        assert torch.allclose(result[f"psnr_view{k}"], psnr[:, k].mean())
    assert set(result) == {"psnr", "ssim"} | {
        f"{n}_view{k}" for n in ("psnr", "ssim") for k in range(3)
    }
    per_view = metric.per_view()
    assert per_view["ssim"] == pytest.approx([float(result[f"ssim_view{k}"]) for k in range(3)])


def test_merged_states_equal_one_metric_over_all_data(no_lpips):
    one, left, right = ImageMetrics(), ImageMetrics(), ImageMetrics()
    one.update(views(0), views(1))
    one.update(views(2), views(3))
    left.update(views(0), views(1))
    right.update(views(2), views(3))
    left.merge_state(right)
    for key, value in one.compute().items():
        assert torch.allclose(left.compute()[key], value), key


def test_lpips_is_skipped_with_a_reason_when_it_cannot_run_offline(no_lpips):
    status = lpips_availability("alex")
    assert not status.available and "torchvision" in status.reason
    metric = ImageMetrics(lpips="auto")
    assert "lpips" in metric.skipped and "lpips" not in metric.names
    with pytest.raises(RuntimeError, match="torchvision"):
        ImageMetrics(lpips=True)
    assert ImageMetrics(lpips=False).skipped["lpips"] == "disabled"


def test_lpips_on_this_machine_is_scored_or_explained():
    """Whatever is installed here: LPIPS either runs (from local weights) or names why not."""
    status = lpips_availability()
    metric = ImageMetrics()
    print(f"\nLPIPS here: {'available' if status.available else 'skipped: ' + status.reason}")
    if status.available:
        metric.update(views(0, (1, 2, 3, 64, 64)), views(1, (1, 2, 3, 64, 64)))
        assert math.isfinite(float(metric.compute()["lpips"]))
    else:
        assert metric.skipped["lpips"] == status.reason


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="equal in shape"):
        per_view_psnr(views(0), views(1, (2, 2, 3, 16, 16)))
