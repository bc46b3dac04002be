"""Evaluation metrics: 3-D consistency of generated views (reprojection error)."""

from pippo_lightning.metrics.matching import (
    LightGlueMatcher,
    Matcher,
    MissingWeightsError,
    SiftMatcher,
    build_matcher,
)
from pippo_lightning.metrics.reprojection import (
    ReprojectionError,
    nearest_camera_pairs,
    random_disjoint_pairs,
)
from pippo_lightning.metrics.triangulation import (
    camera_centers,
    project,
    projection_matrix,
    triangulate_dlt,
)

__all__ = [
    "LightGlueMatcher",
    "Matcher",
    "MissingWeightsError",
    "ReprojectionError",
    "SiftMatcher",
    "build_matcher",
    "camera_centers",
    "nearest_camera_pairs",
    "project",
    "projection_matrix",
    "random_disjoint_pairs",
    "triangulate_dlt",
]
