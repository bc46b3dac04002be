"""Reprojection error per view, for the RE-against-azimuth plot of `pippo-eval`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pippo_lightning.metrics.reprojection import Pair, ReprojectionError

_PREFIXES = ("", "gt_")  # generated images, ground-truth images


class PerViewReprojectionError(ReprojectionError):
    """:class:`ReprojectionError` that also keeps, per view index, the error of the matches
    seen in that view (each match of a pair (a, b) is one observation in a and one in b).

    The totals are the parent's, unchanged. States are sums over ``max_views`` slots, so
    distributed sync and ``merge_state`` stay exact.
    """

    def __init__(self, *args: Any, max_views: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_views = int(max_views)
        for prefix in _PREFIXES:
            zeros = torch.zeros(self.max_views, dtype=torch.float64)
            self.add_state(f"{prefix}view_error_sum", zeros, "sum")
            counts = torch.zeros(self.max_views, dtype=torch.long)
            self.add_state(f"{prefix}view_point_count", counts, "sum")

    def update(self, images: Tensor, *args: Any, **kwargs: Any) -> None:
        if images.ndim == 5 and images.shape[1] > self.max_views:
            raise ValueError(
                f"{images.shape[1]} views per sample exceed max_views={self.max_views}"
            )
        super().update(images, *args, **kwargs)

    def _accumulate(self, prefix: str, distances: Tensor | None, pair: Pair | None = None) -> None:
        super()._accumulate(prefix, distances, pair)
        if distances is None or pair is None:
            return
        half = len(distances) // 2  # the first half lies in view a, the rest in view b
        error_sum = getattr(self, f"{prefix}view_error_sum")
        count = getattr(self, f"{prefix}view_point_count")
        for view, part in zip(pair, (distances[:half], distances[half:]), strict=True):
            error_sum[view] += part.sum().to(error_sum)
            count[view] += part.numel()

    def per_view(self, num_views: int) -> dict[str, list[float | None]]:
        """``{"reprojection_error_pct": [view 0, ...], "gt_reprojection_error_pct": [...]}``,
        in % of max(H, W); None for a view no pair matched in."""
        side = max(int(self.max_side), 1)
        out: dict[str, list[float | None]] = {}
        for prefix in _PREFIXES:
            counts = getattr(self, f"{prefix}view_point_count")[:num_views]
            if prefix and int(self.gt_pair_count) == 0:
                continue  # no ground truth was given
            sums = getattr(self, f"{prefix}view_error_sum")[:num_views]
            out[f"{prefix}reprojection_error_pct"] = [
                float(100.0 * s / n / side) if n > 0 else None
                for s, n in zip(sums.tolist(), counts.tolist(), strict=True)
            ]
        return out
