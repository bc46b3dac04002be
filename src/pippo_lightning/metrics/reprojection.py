"""Reprojection error: how 3-D consistent a set of generated views is, given their cameras.

For each pair of views: match keypoints, triangulate every match with the *known* cameras
(DLT), reproject the point into both views and measure the pixel distance to the keypoints.
Views of one scene reproject to within matching noise; views that disagree leave a residual.
Reported: mean over all observations (two per match), in px and % of the longer side.

Cameras: OpenCV K [3, 3] in pixels of the images passed in, world->camera extrinsics.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from pippo_lightning.extras import require
from pippo_lightning.metrics.matching import Matcher, build_matcher
from pippo_lightning.metrics.triangulation import (
    camera_centers,
    project_homogeneous,
    projection_matrix,
    triangulate_dlt_homogeneous,
)

log = logging.getLogger(__name__)

PairStrategy = Literal["nearest", "random"]
Verification = Literal["essential", "none"]
Pair = tuple[int, int]

#: Fewest matches the essential-matrix check is run on: a 5-point model fits any 5-7 points
#: (nothing could be rejected), and RANSAC needs a margin to tell inliers from outliers.
MIN_MATCHES_TO_VERIFY = 8


# ------------------------------------------------------------------------------ pair selection


def nearest_camera_pairs(centers: Tensor) -> list[Pair]:
    """Pairs (i < j) of nearby cameras from centres [NV, 3], by bipartite matching.

    Each camera is assigned a distinct partner so that the summed centre distance is minimal
    (a camera may not pick itself); an assignment i -> j and j -> i is one pair. Every camera
    thus appears in at least one pair, and close cameras see enough of the same surface to match.
    """
    require("scipy", "pairing cameras by assignment")  # deferred: only this strategy needs it
    from scipy.optimize import linear_sum_assignment

    num_views = len(centers)
    if num_views < 2:
        return []
    distances = torch.cdist(centers.double(), centers.double()).cpu().numpy()  # [NV, NV]
    # A finite "forbidden" cost keeps the problem feasible for any NV >= 2.
    np.fill_diagonal(distances, distances.max() * num_views + 1.0)
    rows, cols = linear_sum_assignment(distances)
    return sorted({(min(i, j), max(i, j)) for i, j in zip(rows.tolist(), cols.tolist())})


def random_disjoint_pairs(num_views: int, seed: int) -> list[Pair]:
    """``num_views // 2`` pairs (i < j) of distinct views, no view used twice, fixed by ``seed``."""
    order = np.random.default_rng(seed).permutation(num_views).tolist()
    pairs = zip(order[0::2], order[1::2])  # an odd view out is left unused
    return sorted((min(i, j), max(i, j)) for i, j in pairs)


# ----------------------------------------------------------------------------- per-pair errors


def to_uint8_images(images: Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """Images [..., 3, H, W] with values in ``value_range`` -> uint8 [..., H, W, 3] numpy."""
    if images.dtype == torch.uint8:
        scaled = images
    else:
        low, high = value_range
        unit = (images.detach().float() - low) / (high - low)
        scaled = (unit * 255.0).round().clamp(0, 255).to(torch.uint8)
    return scaled.movedim(-3, -1).cpu().numpy()


def essential_inliers(
    points_a: Tensor,
    points_b: Tensor,
    intrinsics_a: Tensor,
    intrinsics_b: Tensor,
    threshold_px: float,
    seed: int = 0,
) -> Tensor:
    """Mask [M] of matches consistent with *some* rigid motion between two calibrated views.

    RANSAC over the essential matrix (5-point) from pixels [M, 2] (package convention) and
    K [3, 3]. Only the intrinsics are used, never the extrinsics under test: a match that no
    camera motion explains is a matcher failure, while views that disagree with their given
    cameras keep their matches and still score high. Fewer than
    :data:`MIN_MATCHES_TO_VERIFY` matches are all kept.
    """
    cv2 = require("cv2", "verifying matches (RE metric)")  # deferred: only verification needs it

    num_matches = len(points_a)
    keep_all = torch.ones(num_matches, dtype=torch.bool)
    if num_matches < MIN_MATCHES_TO_VERIFY:
        return keep_all

    def normalized(points: Tensor, intrinsics: Tensor) -> np.ndarray:
        """Pixels -> normalized image coordinates [M, 2] (K^-1 [x, y, 1])."""
        homogeneous = torch.cat([points.double(), torch.ones(len(points), 1).double()], dim=1)
        rays = homogeneous @ torch.linalg.inv(intrinsics.double().cpu()).T
        return (rays[:, :2] / rays[:, 2:]).numpy()

    focal = float(
        (intrinsics_a[0, 0] + intrinsics_a[1, 1] + intrinsics_b[0, 0] + intrinsics_b[1, 1]) / 4
    )
    cv2.setRNGSeed(seed)  # RANSAC samples with OpenCV's RNG: fix it, the metric is reproducible
    try:
        _, mask = cv2.findEssentialMat(
            normalized(points_a, intrinsics_a),
            normalized(points_b, intrinsics_b),
            np.eye(3),
            method=cv2.RANSAC,
            prob=0.9999,
            threshold=threshold_px / focal,
        )
    except cv2.error:
        # the 5-point solver's polynomial degenerates when the matches have no disparity at all
        # (two identical images, e.g. the copy-the-reference baseline): no motion to fit
        mask = None
    if mask is None:  # degenerate input (e.g. all points identical): nothing to reject on
        return keep_all
    return torch.from_numpy(mask.ravel() > 0)


def pair_reprojection_distances(
    matcher: Matcher,
    image_a: np.ndarray,
    image_b: np.ndarray,
    projection_a: Tensor,
    projection_b: Tensor,
    min_confidence: float,
    intrinsics: tuple[Tensor, Tensor] | None = None,
    verify_threshold_px: float = 2.0,
) -> Tensor:
    """Pixel distances [2 M] between M matches of a pair and their triangulated reprojections.

    Images uint8 [H, W, 3]; cameras P [3, 4]. The first M distances are in view a, the rest
    in view b. Matches scoring at or below ``min_confidence`` are dropped first; with
    ``intrinsics`` (K_a, K_b) given, so are matches that fail :func:`essential_inliers`.
    """
    points_a, points_b, confidence = matcher.match(image_a, image_b)  # [M, 2], [M, 2], [M]
    keep = confidence > min_confidence
    points_a, points_b = points_a[keep].double(), points_b[keep].double()
    if intrinsics is not None:
        keep = essential_inliers(points_a, points_b, *intrinsics, verify_threshold_px)
        points_a, points_b = points_a[keep], points_b[keep]
    num_matches = len(points_a)
    p_a = projection_a.double().cpu().expand(num_matches, 3, 4)
    p_b = projection_b.double().cpu().expand(num_matches, 3, 4)
    # Reproject the homogeneous point: well defined even for matches that triangulate to
    # infinity (e.g. parallel rays from a bad generation), where X / w would be inf.
    points_h = triangulate_dlt_homogeneous(p_a, p_b, points_a, points_b)  # [M, 4]
    distance_a = (project_homogeneous(p_a, points_h) - points_a).norm(dim=-1)  # [M]
    distance_b = (project_homogeneous(p_b, points_h) - points_b).norm(dim=-1)
    return torch.cat([distance_a, distance_b])


# ---------------------------------------------------------------------------------- the metric

_PREFIXES = ("", "gt_")  # generated images, ground-truth images


class ReprojectionError(Metric):
    """Mean reprojection error of keypoints matched between pairs of views (lower is better).

    Each sample's views are paired (``pairs``); every pair is matched, each match triangulated
    with the given cameras and reprojected into both views. A pair with fewer than
    ``min_matches`` matches (after ``min_confidence``) counts as failed and adds no points.
    Pass ``gt_images`` to score real views of the same cameras alongside: the floor set by
    matching noise and camera calibration.

    With ``verify="essential"`` (default) each pair's matches are first checked against an
    essential matrix fitted by RANSAC from the intrinsics alone (:func:`essential_inliers`):
    it drops the matcher's own mistakes (repeated patterns, occlusion corners) that would
    otherwise dominate a mean of pixel distances, and it never sees the extrinsics, so views
    inconsistent with their cameras still score high. ``verify="none"`` scores every match.

    All states are tensors reduced by sum (the image size by max), so distributed sync and
    ``merge_state`` are exact. ``compute()`` returns ``reprojection_error_px`` (mean over all
    observations, two per match), ``reprojection_error_pct`` (of max(H, W); of the largest
    side seen if image sizes vary), ``pairs`` (pairs tried) and ``failed_pairs``; and the same
    prefixed ``gt_`` when ground truth was given. With no matched point the errors are NaN.

    Args:
        matcher: "sift" (OpenCV, needs no weights), "lightglue" (DISK + LightGlue, needs local
            weights; see :class:`~pippo_lightning.metrics.matching.LightGlueMatcher`) or any
            object with a ``match`` method (:class:`~pippo_lightning.metrics.matching.Matcher`).
        pairs: "nearest": bipartite matching of camera centres (the Pippo release);
            "random": random disjoint pairs (the paper), the same for every sample so that the
            value does not depend on how data are batched or sharded.
        seed: seed of the random pairs.
        min_matches: fewer matches than this and the pair fails (5 in the paper).
        min_confidence: keep matches scoring above this (0.2 in the paper with SuperGlue).
        verify: "essential" (RANSAC essential-matrix check of each pair's matches) or "none".
        verify_threshold_px: the check's inlier distance to the epipolar line, in pixels.
        matcher_options: keyword arguments of the matcher named by ``matcher`` (e.g.
            ``{"ratio": 0.8}`` for SIFT, ``{"disk_weights": "/path"}`` for LightGlue).
        value_range: the (low, high) of float images, (-1, 1) or (0, 1); uint8 images are
            taken as they are.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        matcher: str | Matcher = "sift",
        pairs: PairStrategy = "nearest",
        seed: int = 0,
        min_matches: int = 5,
        min_confidence: float = 0.0,
        verify: Verification = "essential",
        verify_threshold_px: float = 2.0,
        matcher_options: dict[str, Any] | None = None,
        value_range: Sequence[float] = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pairs not in ("nearest", "random"):
            raise ValueError(f"pairs must be 'nearest' or 'random', got {pairs!r}")
        if verify not in ("essential", "none"):
            raise ValueError(f"verify must be 'essential' or 'none', got {verify!r}")
        if not verify_threshold_px > 0:
            raise ValueError(f"verify_threshold_px must be > 0, got {verify_threshold_px}")
        if matcher_options and not isinstance(matcher, str):
            raise ValueError("matcher_options apply to a matcher given by name, not an object")
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        # Outside the module tree (object.__setattr__ skips nn.Module's registration): a
        # network matcher's frozen weights are then in no owner's state_dict() (checkpoints),
        # parameters() (what DDP/FSDP wrap and optimisers see) or dtype casts; it follows the
        # metric's device lazily, in update().
        object.__setattr__(
            self,
            "_matcher",
            build_matcher(matcher, **dict(matcher_options or {}))
            if isinstance(matcher, str)
            else matcher,
        )
        self.pairs = pairs
        self.verify = verify
        self.verify_threshold_px = float(verify_threshold_px)
        self.seed = seed
        self.min_matches = min_matches
        self.min_confidence = min_confidence
        self.value_range = (low, high)

        for prefix in _PREFIXES:
            # float64: a long evaluation sums millions of sub-pixel distances.
            self.add_state(f"{prefix}error_sum", torch.tensor(0.0, dtype=torch.float64), "sum")
            for count in ("point_count", "pair_count", "failed_pairs"):
                self.add_state(f"{prefix}{count}", torch.tensor(0, dtype=torch.long), "sum")
        self.add_state("max_side", torch.tensor(0, dtype=torch.long), "max")

    @property
    def matcher(self) -> Matcher:
        """The keypoint matcher (not a submodule: see ``__init__``)."""
        return self._matcher

    def _place_matcher(self) -> None:
        """Move a network matcher to the metric's device, where it is not already."""
        if not isinstance(self._matcher, nn.Module):
            return
        tensors = itertools.chain(self._matcher.parameters(), self._matcher.buffers())
        first = next(tensors, None)
        if first is not None and first.device != self.device:
            self._matcher.to(self.device)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Drop matcher weights that checkpoints saved before the matcher left the module tree
        still hold (the matcher loads its own weight files), then load as usual."""
        stale = [key for key in state_dict if key.startswith(f"{prefix}matcher.")]
        for key in stale:
            del state_dict[key]
        if stale:
            log.info(
                "ignoring %d matcher tensors under %r in the checkpoint (saved before matcher "
                "weights were kept out of checkpoints; the matcher loads its own weight files)",
                len(stale),
                f"{prefix}matcher.",
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _select_pairs(self, extrinsics: Tensor) -> list[Pair]:
        """View pairs of one sample from its extrinsics [NV, 3 or 4, 4]."""
        if self.pairs == "nearest":
            return nearest_camera_pairs(camera_centers(extrinsics.double()))
        return random_disjoint_pairs(len(extrinsics), self.seed)

    def _accumulate(self, prefix: str, distances: Tensor | None, pair: Pair | None = None) -> None:
        """Add one pair's distances (None: the pair failed) to the states named ``prefix``*;
        ``pair`` (views a, b) is for subclasses that also keep per-view figures."""
        getattr(self, f"{prefix}pair_count").add_(1)
        if distances is None:
            getattr(self, f"{prefix}failed_pairs").add_(1)
            return
        error_sum = getattr(self, f"{prefix}error_sum")
        error_sum.add_(distances.sum().to(error_sum))
        getattr(self, f"{prefix}point_count").add_(distances.numel())

    def update(
        self,
        images: Tensor,
        intrinsics: Tensor,
        extrinsics: Tensor,
        gt_images: Tensor | None = None,
    ) -> None:
        """Score views [B, NV, 3, H, W] of cameras K [B, NV, 3, 3], E [B, NV, 3 or 4, 4]."""
        _check_shapes(images, intrinsics, extrinsics, gt_images)
        self._place_matcher()
        height, width = images.shape[-2:]
        self.max_side = torch.clamp_min(self.max_side, max(height, width))

        projections = projection_matrix(intrinsics.double(), extrinsics.double())  # [B, NV, 3, 4]
        image_sets = {"": to_uint8_images(images, self.value_range)}  # [B, NV, H, W, 3]
        if gt_images is not None:
            image_sets["gt_"] = to_uint8_images(gt_images, self.value_range)

        for sample, sample_projections in enumerate(projections):
            for i, j in self._select_pairs(extrinsics[sample]):
                pair_intrinsics = (
                    (intrinsics[sample, i], intrinsics[sample, j])
                    if self.verify == "essential"
                    else None
                )
                for prefix, views in image_sets.items():
                    distances = pair_reprojection_distances(
                        self.matcher,
                        views[sample, i],
                        views[sample, j],
                        sample_projections[i],
                        sample_projections[j],
                        self.min_confidence,
                        pair_intrinsics,
                        self.verify_threshold_px,
                    )
                    enough = len(distances) >= 2 * self.min_matches  # two per match
                    self._accumulate(prefix, distances if enough else None, (i, j))

    def compute(self) -> dict[str, Tensor]:
        results = {}
        for prefix in _PREFIXES:
            pair_count = getattr(self, f"{prefix}pair_count")
            if prefix and pair_count == 0:
                continue  # no ground truth was given
            error_px = getattr(self, f"{prefix}error_sum") / getattr(self, f"{prefix}point_count")
            results[f"{prefix}reprojection_error_px"] = error_px.float()
            results[f"{prefix}reprojection_error_pct"] = (100.0 * error_px / self.max_side).float()
            results[f"{prefix}pairs"] = pair_count
            results[f"{prefix}failed_pairs"] = getattr(self, f"{prefix}failed_pairs")
        return results


def _check_shapes(
    images: Tensor, intrinsics: Tensor, extrinsics: Tensor, gt_images: Tensor | None
) -> None:
    """Raise a ValueError that names the offending argument and its shape."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be [B, NV, 3, H, W], got {list(images.shape)}")
    batch_views = tuple(images.shape[:2])
    if tuple(intrinsics.shape) != (*batch_views, 3, 3):
        raise ValueError(f"intrinsics must be [B, NV, 3, 3], got {list(intrinsics.shape)}")
    if tuple(extrinsics.shape[:2]) != batch_views or tuple(extrinsics.shape[2:]) not in (
        (3, 4),
        (4, 4),
    ):
        raise ValueError(f"extrinsics must be [B, NV, 3 or 4, 4], got {list(extrinsics.shape)}")
    if gt_images is not None and gt_images.shape != images.shape:
        raise ValueError(
            f"gt_images must match images {list(images.shape)}, got {list(gt_images.shape)}"
        )


def reprojection_log_name(key: str) -> str:
    """ReprojectionError.compute() key -> logged name: ``failed_pairs`` ->
    ``reprojection_failed_pairs``, ``gt_pairs`` -> ``gt_reprojection_pairs``."""
    prefix = "gt_" if key.startswith("gt_") else ""
    bare = key.removeprefix("gt_")
    return prefix + (bare if bare.startswith("reprojection") else f"reprojection_{bare}")
