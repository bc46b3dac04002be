"""Image-fidelity metrics of generated views against ground truth: PSNR, SSIM and, when its
weights are on this machine, LPIPS — per view and averaged.

PSNR and SSIM come from torchmetrics and need nothing else. LPIPS (torchmetrics'
``LearnedPerceptualImagePatchSimilarity``) needs torchvision *and* an ImageNet backbone
(AlexNet / VGG16 / SqueezeNet) that torchvision would otherwise download on first use; this
module never downloads: without both it reports LPIPS as skipped, with the reason.

Images are batches of views [B, NV, 3, H, W] with values in ``value_range`` ((-1, 1) by
default, the range the stages generate in).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

LpipsNet = Literal["alex", "vgg", "squeeze"]

#: torchvision's model builder (and weights enum) behind each LPIPS backbone.
_LPIPS_BACKBONES: dict[str, tuple[str, str]] = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


# ------------------------------------------------------------------------------ per-view values


def to_unit_range(images: Tensor, value_range: Sequence[float] = (-1.0, 1.0)) -> Tensor:
    """Images with values in ``value_range`` → float32 in [0, 1] (clamped)."""
    low, high = (float(v) for v in value_range)
    return ((images.float() - low) / (high - low)).clamp(0.0, 1.0)


def _flat_views(
    images: Tensor, target: Tensor, value_range: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """[B, NV, 3, H, W] pairs → [(B NV), 3, H, W] in [0, 1]; shapes are checked to match."""
    if images.ndim != 5 or images.shape != target.shape:
        raise ValueError(
            "images and target must both be [B, NV, 3, H, W] and equal in shape, got "
            f"{list(images.shape)} and {list(target.shape)}"
        )
    flat = "b v c h w -> (b v) c h w"
    return (
        rearrange(to_unit_range(images, value_range), flat),
        rearrange(to_unit_range(target, value_range), flat),
    )


def per_view_psnr(
    images: Tensor, target: Tensor, value_range: Sequence[float] = (-1.0, 1.0)
) -> Tensor:
    """PSNR (dB) of every view, [B, NV]; images and target [B, NV, 3, H, W]."""
    a, b = _flat_views(images, target, value_range)
    values = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.reshape(images.shape[:2])


def per_view_ssim(
    images: Tensor, target: Tensor, value_range: Sequence[float] = (-1.0, 1.0)
) -> Tensor:
    """SSIM (Gaussian window 11, sigma 1.5) of every view, [B, NV]; always in fp32."""
    a, b = _flat_views(images, target, value_range)
    # Called from a validation step, this runs inside the trainer's bf16 autocast, which would
    # run SSIM's Gaussian-filter convolutions in bf16: its variances (E[x^2] - E[x]^2) then
    # cancel to noise and SSIM goes negative (-0.46 where fp32 gives ~0.3).
    with torch.autocast(a.device.type, enabled=False):
        values = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return values.reshape(images.shape[:2])


# -------------------------------------------------------------------------------------- LPIPS


@dataclass(frozen=True)
class LpipsAvailability:
    """Whether LPIPS can run offline here, and if not, why (one sentence for reports)."""

    available: bool
    reason: str = ""


def lpips_availability(net: LpipsNet = "alex") -> LpipsAvailability:
    """Check, without downloading anything, that LPIPS with backbone ``net`` can be built.

    torchmetrics ships LPIPS's small linear heads; the backbone comes from torchvision, which
    looks for its weights in the torch hub cache and downloads them when absent — so both
    torchvision and the cached weight file must be present.
    """
    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(_LPIPS_BACKBONES)}, got {net!r}")
    if importlib.util.find_spec("torchvision") is None:
        return LpipsAvailability(False, "torchvision is not installed (LPIPS needs its backbones)")
    import torchvision.models

    _, weights_name = _LPIPS_BACKBONES[net]
    url = getattr(torchvision.models, weights_name).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        return LpipsAvailability(
            False, f"the {net} backbone weights are not in the torch hub cache ({cached})"
        )
    return LpipsAvailability(True)


# ------------------------------------------------------------------------------- the collection


class ImageMetrics(Metric):
    """PSNR, SSIM and (when available) LPIPS of generated views against ground truth.

    ``update(images, target)`` takes [B, NV, 3, H, W]; every view is scored on its own. The
    per-view scores are kept (``cat`` states, so distributed sync is exact), and ``compute()``
    returns a flat dict of scalars: ``psnr``, ``ssim``, ``lpips`` (means over all views) and
    ``psnr_view{k}``, ... (means over samples of the k-th view of each sample) — flat so that
    it can go straight to ``LightningModule.log_dict``.

    Args:
        lpips: "auto" scores LPIPS when :func:`lpips_availability` says it can run offline,
            True requires it (raises otherwise), False never scores it. Why it was skipped is in
            :attr:`skipped`.
        lpips_net: LPIPS backbone.
        value_range: (low, high) of the images' values.
    """

    is_differentiable = False
    higher_is_better = None  # PSNR/SSIM: higher is better, LPIPS: lower
    full_state_update = False

    def __init__(
        self,
        lpips: bool | Literal["auto"] = "auto",
        lpips_net: LpipsNet = "alex",
        value_range: Sequence[float] = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.value_range = (low, high)
        #: metric name → why it was not scored
        self.skipped: dict[str, str] = {}
        self._lpips = self._build_lpips(lpips, lpips_net)
        names = ["psnr", "ssim"] + (["lpips"] if self._lpips is not None else [])
        self.names: tuple[str, ...] = tuple(names)
        for name in (*self.names, "view_index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _build_lpips(self, lpips: bool | str, net: LpipsNet) -> Metric | None:
        if lpips is False:
            self.skipped["lpips"] = "disabled"
            return None
        status = lpips_availability(net)
        if not status.available:
            if lpips is True:
                raise RuntimeError(f"LPIPS was required but cannot run offline: {status.reason}")
            self.skipped["lpips"] = status.reason
            return None
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True)

    def _lpips_per_view(self, images: Tensor, target: Tensor) -> Tensor:
        """LPIPS of every view [B, NV] (the inner metric is used as a scorer, then reset)."""
        assert self._lpips is not None
        a, b = _flat_views(images, target, self.value_range)
        self._lpips.reset()
        with torch.autocast(a.device.type, enabled=False):  # fp32 like SSIM (per_view_ssim)
            self._lpips.update(a, b)
        scores = self._lpips.compute().reshape(images.shape[:2])
        self._lpips.reset()
        return scores

    def update(self, images: Tensor, target: Tensor) -> None:
        """Score views [B, NV, 3, H, W] against ground truth of the same shape."""
        b, num_views = images.shape[:2]
        scores = {
            "psnr": per_view_psnr(images, target, self.value_range),
            "ssim": per_view_ssim(images, target, self.value_range),
        }
        if self._lpips is not None:
            scores["lpips"] = self._lpips_per_view(images, target)
        for name in self.names:
            getattr(self, name).append(scores[name].flatten().float())  # [(B NV)]
        views = torch.arange(num_views, device=images.device).repeat(b)  # [(B NV)]
        self.view_index.append(views)

    def compute(self) -> dict[str, Tensor]:
        views = _cat(self.view_index).long()
        results: dict[str, Tensor] = {}
        for name in self.names:
            values = _cat(getattr(self, name))
            results[name] = values.mean()
            for k, mean in enumerate(_mean_by_index(values, views)):
                results[f"{name}_view{k}"] = mean
        return results

    def per_view(self) -> dict[str, list[float]]:
        """Per view-index means as lists, e.g. ``{"psnr": [view 0, view 1, ...], ...}``."""
        computed = self.compute()
        return {
            name: [float(v) for k, v in computed.items() if k.startswith(f"{name}_view")]
            for name in self.names
        }


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A ``cat`` state: a list before sync, one tensor after."""
    if isinstance(state, Tensor):
        return state
    if not state:
        raise RuntimeError("ImageMetrics.compute() called before any update()")
    return torch.cat(state)


def _mean_by_index(values: Tensor, index: Tensor) -> Tensor:
    """Mean of ``values`` [N] for each index 0..max(index), [max + 1]."""
    counts = torch.bincount(index).clamp_min(1)
    sums = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    return sums.index_add_(0, index, values) / counts
