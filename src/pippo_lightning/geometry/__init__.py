"""Camera geometry (OpenCV convention), Plücker rays and spatial anchors, in pure torch."""

from pippo_lightning.geometry.anchors import ANCHOR_COLOURS, render_spatial_anchor
from pippo_lightning.geometry.cameras import (
    WORLD_UP,
    camera_centers,
    camera_from_pose_vector,
    camera_pose_vector,
    crop_intrinsics,
    dome_cameras,
    intrinsics_from_fov,
    look_at,
    orbit_pivot,
    project_points,
    relative_azimuth_deg,
    scale_intrinsics,
)
from pippo_lightning.geometry.plucker import camera_rays, plucker_rays

__all__ = [
    "ANCHOR_COLOURS",
    "WORLD_UP",
    "camera_centers",
    "camera_from_pose_vector",
    "camera_pose_vector",
    "camera_rays",
    "crop_intrinsics",
    "dome_cameras",
    "intrinsics_from_fov",
    "look_at",
    "orbit_pivot",
    "plucker_rays",
    "project_points",
    "relative_azimuth_deg",
    "render_spatial_anchor",
    "scale_intrinsics",
]
