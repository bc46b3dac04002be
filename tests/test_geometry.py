"""Camera conventions, Plücker rays and the spatial anchor."""

from __future__ import annotations

import math

import pytest
import torch

from pippo_lightning.geometry import (
    ANCHOR_COLOURS,
    camera_centers,
    camera_from_pose_vector,
    camera_pose_vector,
    camera_rays,
    crop_intrinsics,
    dome_cameras,
    intrinsics_from_fov,
    look_at,
    orbit_pivot,
    plucker_rays,
    project_points,
    relative_azimuth_deg,
    render_spatial_anchor,
    scale_intrinsics,
)

TARGET = torch.tensor([0.1, 0.9, -0.2])


def random_eyes(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, 3, generator=generator)
    directions[:, 1] = directions[:, 1].clamp(-0.8, 0.8)  # stay away from the up axis
    return TARGET + 3.0 * directions / directions.norm(dim=-1, keepdim=True)


def test_look_at_rotation_is_orthonormal_with_det_plus_one() -> None:
    extrinsics = look_at(random_eyes(16), TARGET.expand(16, 3), (0.0, 1.0, 0.0))
    rotation = extrinsics[:, :3, :3]
    torch.testing.assert_close(
        rotation @ rotation.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(extrinsics[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(16, 4))


def test_look_at_target_projects_to_principal_point_in_front() -> None:
    eyes = random_eyes(16, seed=1)
    extrinsics = look_at(eyes, TARGET.expand(16, 3), (0.0, 1.0, 0.0))
    intrinsics = intrinsics_from_fov(40.0, 48, 32).expand(16, 3, 3)
    uv, depth = project_points(TARGET.expand(16, 1, 3), intrinsics, extrinsics)
    torch.testing.assert_close(
        uv[:, 0], torch.tensor([24.0, 16.0]).expand(16, 2), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(depth[:, 0], (eyes - TARGET).norm(dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(camera_centers(extrinsics), eyes, atol=1e-5, rtol=0)


def test_look_at_puts_up_at_the_top_of_the_image() -> None:
    extrinsics = look_at((0.0, 1.0, 3.0), (0.0, 1.0, 0.0), (0.0, 1.0, 0.0))
    intrinsics = intrinsics_from_fov(40.0, 32, 32)
    above_and_left = torch.tensor([[0.0, 1.5, 0.0], [-0.5, 1.0, 0.0]])
    uv, _ = project_points(above_and_left, intrinsics, extrinsics)
    assert uv[0, 1] < 16.0  # above the centre -> smaller row
    assert uv[1, 0] < 16.0  # world -x seen from +z is on the left


def test_look_at_rejects_up_parallel_to_view() -> None:
    with pytest.raises(ValueError, match="parallel"):
        look_at((0.0, 3.0, 0.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def test_intrinsics_from_fov_uses_vertical_fov_and_image_centre() -> None:
    k = intrinsics_from_fov(90.0, 64, 32)
    assert k[1, 1] == pytest.approx(16.0) and k[0, 0] == pytest.approx(16.0)
    assert (k[0, 2], k[1, 2]) == (32.0, 16.0)


def test_dome_cameras_rings_look_at_target_from_radius() -> None:
    rings = [(-15.0, 8), (10.0, 8), (35.0, 4)]
    k, e, azimuth, elevation = dome_cameras(rings, 3.0, TARGET, 40.0, 32, 32)
    assert k.shape == (20, 3, 3) and e.shape == (20, 4, 4)
    assert elevation.tolist() == [-15.0] * 8 + [10.0] * 8 + [35.0] * 4
    centres = camera_centers(e)
    torch.testing.assert_close(
        (centres - TARGET).norm(dim=-1), torch.full((20,), 3.0), atol=1e-5, rtol=0
    )
    uv, _ = project_points(TARGET.expand(20, 1, 3), k, e)
    torch.testing.assert_close(uv[:, 0], torch.full((20, 2), 16.0), atol=1e-4, rtol=0)
    # Staggered rings interleave: the second ring starts a third of its spacing (45/3 deg) later.
    assert azimuth[8].item() == pytest.approx(15.0)
    expected_height = TARGET[1] + 3.0 * torch.sin(torch.deg2rad(elevation))
    torch.testing.assert_close(centres[:, 1], expected_height, atol=1e-5, rtol=0)


def test_pixel_centres_sit_at_half_integers() -> None:
    k = intrinsics_from_fov(50.0, 8, 8)
    e = look_at((0.0, 0.0, -2.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    origins, directions = camera_rays(k, e, 8, 8)
    points = origins + 2.0 * directions  # [8, 8, 3]
    uv, _ = project_points(points.reshape(1, 64, 3), k, e)
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    expected = torch.stack([cols + 0.5, rows + 0.5], dim=-1).reshape(1, 64, 2)
    torch.testing.assert_close(uv, expected, atol=1e-4, rtol=0)


def test_scale_and_crop_intrinsics_keep_projections_consistent() -> None:
    k = intrinsics_from_fov(40.0, 64, 48)
    e = look_at((1.0, 1.2, 3.0), TARGET, (0.0, 1.0, 0.0))
    points = TARGET + torch.tensor([[0.2, 0.3, -0.1], [-0.3, -0.2, 0.1]])
    uv, _ = project_points(points, k, e)
    uv_scaled, _ = project_points(points, scale_intrinsics(k, 0.5, 2.0), e)
    torch.testing.assert_close(uv_scaled, uv * torch.tensor([0.5, 2.0]), atol=1e-4, rtol=0)
    uv_cropped, _ = project_points(points, crop_intrinsics(k, 5.0, 7.0), e)
    torch.testing.assert_close(uv_cropped, uv - torch.tensor([5.0, 7.0]), atol=1e-4, rtol=0)


def test_camera_pose_vector_layout_roundtrip_and_resolution_independence() -> None:
    k, e, _, _ = dome_cameras([(10.0, 4)], 3.0, TARGET, 40.0, 64, 48)
    pose = camera_pose_vector(k, e, 64, 48)
    assert pose.shape == (4, 16)
    torch.testing.assert_close(pose[:, :12], e[:, :3, :4].reshape(4, 12))
    torch.testing.assert_close(pose[:, 14:], torch.tensor([0.5, 0.5]).expand(4, 2))
    torch.testing.assert_close(camera_pose_vector(scale_intrinsics(k, 2.0, 2.0), e, 128, 96), pose)
    k_back, e_back = camera_from_pose_vector(pose, 64, 48)
    torch.testing.assert_close(k_back, k)
    torch.testing.assert_close(e_back, e)


def test_plucker_rays_are_unit_orthogonal_and_pass_through_centre_and_pixel() -> None:
    k, e, _, _ = dome_cameras([(20.0, 3)], 2.5, TARGET, 45.0, 24, 16)
    rays = plucker_rays(k, e, 16, 24)
    assert rays.shape == (3, 6, 16, 24)
    d, m = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3, 16, 24), atol=1e-5, rtol=0)
    torch.testing.assert_close((d * m).sum(dim=1), torch.zeros(3, 16, 24), atol=1e-5, rtol=0)
    centres = camera_centers(e)[:, :, None, None]
    torch.testing.assert_close(m, torch.cross(centres.expand_as(d), d, dim=1), atol=1e-5, rtol=0)

    generator = torch.Generator().manual_seed(0)
    rows, cols = (
        torch.randint(0, 16, (10,), generator=generator),
        torch.randint(0, 24, (10,), generator=generator),
    )
    for view in range(3):
        direction = d[view, :, rows, cols].T  # [10, 3]
        points = centres[view, :, 0, 0] + 1.7 * direction
        uv, depth = project_points(points, k[view], e[view])
        assert bool((depth > 0).all())
        torch.testing.assert_close(
            uv, torch.stack([cols + 0.5, rows + 0.5], dim=-1).float(), atol=1e-3, rtol=0
        )


def test_relative_azimuth_follows_the_dome_and_the_reference() -> None:
    _, e, azimuth, _ = dome_cameras([(-15.0, 8), (30.0, 8)], 3.0, TARGET, 40.0, 32, 32)
    torch.testing.assert_close(orbit_pivot(e)[[0, 2]], TARGET[[0, 2]], atol=1e-4, rtol=0)
    relative = relative_azimuth_deg(e, e[0])
    torch.testing.assert_close(relative, azimuth, atol=1e-3, rtol=0)
    shifted = relative_azimuth_deg(e, e[1])  # reference at azimuth 45
    torch.testing.assert_close(shifted, (azimuth - 45.0).remainder(360.0), atol=1e-3, rtol=0)
    assert bool(((relative >= 0) & (relative < 360)).all())


def _colour_mask(image: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    return (image - torch.tensor(colour)[:, None, None]).abs().amax(dim=0) < 0.05


def test_spatial_anchor_axes_point_along_forward_up_right() -> None:
    centre, forward, up = (
        torch.tensor([0.0, 1.6, 0.0]),
        torch.tensor([0.0, 0.0, 1.0]),
        torch.tensor([0.0, 1.0, 0.0]),
    )
    k = intrinsics_from_fov(40.0, 64, 64)[None]
    e = look_at((1.0, 2.0, 1.2), centre, (0.0, 1.0, 0.0))[None]  # an oblique view
    image = render_spatial_anchor(centre, forward, up, k, e, 64, 64, axis_length=0.3)[0]
    assert image.shape == (3, 64, 64)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert bool((image.sum(dim=0) == 0).float().mean() > 0.5)  # mostly black background
    right = torch.cross(forward, up, dim=0)
    for colour, axis in zip(ANCHOR_COLOURS[1:], (forward, up, right)):
        mask = _colour_mask(image, colour)
        assert int(mask.sum()) > 3, f"axis {colour} not drawn"
        rows, cols = mask.nonzero(as_tuple=True)
        centroid = torch.stack([cols.float().mean() + 0.5, rows.float().mean() + 0.5])
        uv, _ = project_points(torch.stack([centre, centre + 0.3 * axis]), k[0], e[0])
        # The drawn segment lies on the far side of the centre, towards the axis tip.
        along = (centroid - uv[0]) @ (uv[1] - uv[0]) / (uv[1] - uv[0]).norm() ** 2
        assert 0.2 < float(along) < 1.1, f"axis {colour}: {along}"


def test_spatial_anchor_is_depth_correct() -> None:
    centre, forward, up = (
        torch.tensor([0.0, 1.6, 0.0]),
        torch.tensor([0.0, 0.0, 1.0]),
        torch.tensor([0.0, 1.0, 0.0]),
    )
    k = intrinsics_from_fov(30.0, 33, 33)[None]
    front = look_at(centre + torch.tensor([0.0, 0.0, 1.5]), centre, (0.0, 1.0, 0.0))[None]
    back = look_at(centre - torch.tensor([0.0, 0.0, 1.5]), centre, (0.0, 1.0, 0.0))[None]
    pixel = (16, 16)  # the centre projects here in both views
    seen_from_front = render_spatial_anchor(centre, forward, up, k, front, 33, 33)[
        0, :, pixel[0], pixel[1]
    ]
    seen_from_back = render_spatial_anchor(centre, forward, up, k, back, 33, 33)[
        0, :, pixel[0], pixel[1]
    ]
    # From the front the forward (red) segment points at the camera and hides the centre sphere;
    # from behind the white sphere hides the segment.
    torch.testing.assert_close(seen_from_front, torch.tensor(ANCHOR_COLOURS[1]))
    torch.testing.assert_close(seen_from_back, torch.tensor(ANCHOR_COLOURS[0]))


def test_spatial_anchor_batches_over_views_and_supersamples() -> None:
    k, e, _, _ = dome_cameras([(0.0, 5)], 2.0, (0.0, 1.6, 0.0), 40.0, 16, 16)
    images = render_spatial_anchor(
        torch.tensor([0.0, 1.6, 0.0]),
        torch.tensor([0.0, 0.0, 1.0]),
        torch.tensor([0.0, 1.0, 0.0]),
        k,
        e,
        16,
        16,
        supersample=2,
    )
    assert images.shape == (5, 3, 16, 16)
    assert bool((images.flatten(1).amax(dim=1) > 0).all())
    assert not math.isclose(float(images[0].sum()), float(images[2].sum()))
