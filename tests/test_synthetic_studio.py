"""The synthetic studio: renderer/camera agreement, subjects, and dataset generation on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pippo_lightning.geometry import (
    camera_pose_vector,
    dome_cameras,
    intrinsics_from_fov,
    look_at,
    plucker_rays,
    project_points,
)
from pippo_lightning.studio import synthetic as synthetic_studio
from pippo_lightning.studio.render import render_scene
from pippo_lightning.studio.scene import BACKGROUND_ID, Lighting, Material, SceneBuilder
from pippo_lightning.studio.subject import SubjectParams, build_subject
from pippo_lightning.studio.synthetic import (
    StudioConfig,
    StudioMismatchError,
    generate_studio,
    render_subject_sample,
    studio_cameras,
    subject_seed,
)

#: Small enough to generate in a fraction of a second.
TINY = StudioConfig(
    num_train_subjects=2, num_val_subjects=1, resolution=24, rings=((0.0, 4), (30.0, 4)), seed=3
)
FACE_PARTS = ("head", "nose", "left_eye", "right_eye", "mouth", "hair")


def load(path: Path) -> dict:
    return np.load(path, allow_pickle=True).item()


def test_renderer_draws_a_point_where_the_cameras_project_it() -> None:
    point = torch.tensor([0.3, 1.2, -0.2])
    builder = SceneBuilder()
    builder.ellipsoid("marker", point, (0.03, 0.03, 0.03), Material((1.0, 1.0, 1.0)))
    k, e, _, _ = dome_cameras([(-15.0, 6), (35.0, 6)], 3.0, (0.0, 0.95, 0.0), 36.0, 64, 64)
    flat = Lighting(ambient=1.0, key_intensity=0.0, fill_intensity=0.0)
    result = render_scene(builder.build(), k, e, 64, 64, background=(0.0, 0.0, 0.0), lighting=flat)
    uv, _ = project_points(point.expand(12, 1, 3), k, e)
    for view in range(12):
        weight = result.rgb[view].mean(dim=0)  # [H, W]
        assert float(weight.sum()) > 0, f"view {view}: marker not drawn"
        rows, cols = torch.meshgrid(
            torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij"
        )
        centroid = torch.stack([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        assert float((centroid - uv[view, 0]).norm()) < 1.0, (
            f"view {view}: {centroid} vs {uv[view, 0]}"
        )


def _front_and_back(subject_seed_: int, res: int = 96):
    subject = build_subject(SubjectParams.sample(subject_seed_, max_body_yaw_deg=0.0))
    head = subject.head_center
    k = intrinsics_from_fov(20.0, res, res).expand(2, 3, 3)
    eyes = torch.stack([head + torch.tensor([0.0, 0.0, 2.0]), head - torch.tensor([0.0, 0.0, 2.0])])
    e = look_at(eyes, head.expand(2, 3), (0.0, 1.0, 0.0))
    return subject, k, e, render_scene(subject.scene, k, e, res, res)


@pytest.mark.parametrize("seed", [0, 7])
def test_head_centre_and_nose_tip_land_on_the_head_and_nose(seed: int) -> None:
    subject, k, e, result = _front_and_back(seed)
    ids = result.primitive_id
    scene = subject.scene
    face = {scene.primitive_id(name) for name in FACE_PARTS}
    uv, _ = project_points(subject.head_center.expand(2, 1, 3), k, e)
    for view in range(2):
        col, row = uv[view, 0].long().tolist()
        assert int(ids[view, row, col]) in face
    # Just behind the tip (the tip itself is the nose's silhouette point) seen from the front.
    inside_nose = subject.nose_tip - 0.01 * subject.head_forward
    uv, depth = project_points(inside_nose.expand(1, 3), k[0], e[0])
    col, row = uv[0].long().tolist()
    assert int(ids[0, row, col]) == scene.primitive_id("nose")
    assert float(result.depth[0, row, col]) == pytest.approx(float(depth[0]), abs=0.03)


@pytest.mark.parametrize("seed", [0, 7])
def test_face_is_visible_from_the_front_only(seed: int) -> None:
    subject, _, _, result = _front_and_back(seed)
    scene = subject.scene
    front, back = result.primitive_id[0], result.primitive_id[1]
    for part in ("nose", "left_eye", "right_eye", "emblem"):
        assert bool((front == scene.primitive_id(part)).any()), f"{part} missing from the front"
        assert not bool((back == scene.primitive_id(part)).any()), f"{part} visible from behind"
    # Not a mirror image either: the back differs from the flipped front.
    mirrored = torch.flip(result.rgb[1], dims=[-1])
    assert float((result.rgb[0] - mirrored).abs().mean()) > 0.02


def test_subject_params_are_deterministic_per_seed() -> None:
    assert SubjectParams.sample(11) == SubjectParams.sample(11)
    assert SubjectParams.sample(11) != SubjectParams.sample(12)


def test_subject_seeds_of_train_and_val_never_overlap() -> None:
    train = {subject_seed(5, "train", i) for i in range(1000)}
    val = {subject_seed(5, "val", i) for i in range(1000)}
    assert not train & val
    assert len(train) == len(val) == 1000


def test_generate_studio_layout_shapes_and_manifest(tmp_path: Path) -> None:
    out = generate_studio(TINY, tmp_path / "studio")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == synthetic_studio.FORMAT_VERSION
    assert manifest["config"] == TINY.to_dict()
    assert manifest["files"] == {
        "train": ["train/subject_00000.npy", "train/subject_00001.npy"],
        "val": ["val/subject_00000.npy"],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studio"]  # no staging leftovers
    sample = load(out / "train/subject_00000.npy")
    nv, h = 8, 24
    expected = {
        "image": (nv, 1, 3, h, h),
        "ref_image": (1, 1, 3, h, h),
        "cam_pose": (nv, 1, 16),
        "ref_cam_pose": (1, 1, 16),
        "plucker": (nv, 1, 6, h, h),
        "ref_plucker": (1, 1, 6, h, h),
        "kpts": (nv, 1, 3, h, h),
        "ref_kpts": (1, 1, 3, h, h),
        "cam_intrin": (nv, 3, 3),
        "cam_extrin": (nv, 4, 4),
        "ref_cam_intrin": (1, 3, 3),
        "ref_cam_extrin": (1, 4, 4),
        "head_center": (3,),
        "head_forward": (3,),
    }
    for key, shape in expected.items():
        assert isinstance(sample[key], torch.Tensor), key
        assert tuple(sample[key].shape) == shape, key
        assert sample[key].dtype == torch.float32, key
    for key in ("image", "ref_image", "kpts", "ref_kpts"):
        values = sample[key]
        assert float(values.min()) >= 0.0 and float(values.max()) <= 255.0
        torch.testing.assert_close(values, values.round())
    assert sample["subject_seed"] == subject_seed(TINY.seed, "train", 0)


def test_stored_cameras_plucker_and_pose_agree(tmp_path: Path) -> None:
    out = generate_studio(TINY, tmp_path / "studio")
    sample = load(out / "val/subject_00000.npy")
    k, e = sample["cam_intrin"], sample["cam_extrin"]
    torch.testing.assert_close(sample["plucker"][:, 0], plucker_rays(k, e, 24, 24))
    torch.testing.assert_close(sample["cam_pose"][:, 0], camera_pose_vector(k, e, 24, 24))
    ref_k, ref_e = sample["ref_cam_intrin"], sample["ref_cam_extrin"]
    torch.testing.assert_close(
        sample["ref_cam_pose"][:, 0], camera_pose_vector(ref_k, ref_e, 24, 24)
    )
    # The reference is frontal and at head height, and not one of the dome cameras.
    ref_centre = -ref_e[0, :3, :3].T @ ref_e[0, :3, 3]
    assert float(ref_centre[0]) == pytest.approx(0.0, abs=1e-5) and float(ref_centre[2]) > 0
    assert float(ref_centre[1]) == pytest.approx(float(sample["head_center"][1]), abs=1e-4)
    assert not any(torch.allclose(ref_e[0], view) for view in e)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_studio(TINY, tmp_path / "a")
    second = generate_studio(TINY, tmp_path / "b")
    for name in ("train/subject_00001.npy", "val/subject_00000.npy"):
        a, b = load(first / name), load(second / name)
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_train_and_val_subjects_differ(tmp_path: Path) -> None:
    out = generate_studio(TINY, tmp_path / "studio")
    samples = [
        load(out / name)
        for name in ("train/subject_00000.npy", "train/subject_00001.npy", "val/subject_00000.npy")
    ]
    seeds = [s["subject_seed"] for s in samples]
    assert len(set(seeds)) == 3 and seeds[2] % 2 == 1 and seeds[0] % 2 == 0
    assert not torch.equal(samples[0]["image"], samples[2]["image"])
    assert not torch.equal(samples[1]["image"], samples[2]["image"])


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = synthetic_studio.render_subject_sample

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_studio, "render_subject_sample", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_studio(TINY, tmp_path / "studio")
    assert list(tmp_path.iterdir()) == []


def test_existing_studio_is_reused_and_a_different_config_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = generate_studio(TINY, tmp_path / "studio")

    def no_render(*args, **kwargs):
        raise AssertionError("a matching studio must be reused, not re-rendered")

    monkeypatch.setattr(synthetic_studio, "render_subject_sample", no_render)
    assert generate_studio(StudioConfig.from_dict(TINY.to_dict()), out) == out
    other = StudioConfig.from_dict({**TINY.to_dict(), "resolution": 32})
    with pytest.raises(StudioMismatchError, match="resolution"):
        generate_studio(other, out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(StudioMismatchError, match="not a synthetic studio"):
        generate_studio(TINY, tmp_path / "junk")


def test_render_subject_sample_anchor_marks_the_head() -> None:
    sample = render_subject_sample(SubjectParams.sample(4), TINY)
    cams = studio_cameras(TINY, head_height=float(sample["head_center"][1]))
    uv, depth = project_points(
        sample["head_center"].expand(8, 1, 3), cams["intrinsics"], cams["extrinsics"]
    )
    assert bool((depth > 0).all())
    for view in range(8):
        col, row = uv[view, 0].long().tolist()
        assert float(sample["kpts"][view, 0, :, row, col].max()) > 0  # marker drawn at the head


def test_studio_config_accepts_lists_and_rejects_unknown_keys() -> None:
    config = StudioConfig.from_dict({"rings": [[0, 4], [30, 4]], "background": [0.5, 0.5, 0.5]})
    assert config.rings == ((0.0, 4), (30.0, 4)) and config.num_views == 8
    with pytest.raises(ValueError, match="unknown keys"):
        StudioConfig.from_dict({"resolutoin": 32})


def test_background_pixels_have_background_id() -> None:
    subject = build_subject(SubjectParams.sample(0))
    k, e, _, _ = dome_cameras([(10.0, 2)], 3.2, (0.0, 0.95, 0.0), 36.0, 16, 16)
    result = render_scene(subject.scene, k, e, 16, 16, background=(0.1, 0.2, 0.3))
    corner = result.primitive_id[:, 0, 0]
    assert bool((corner == BACKGROUND_ID).all())
    torch.testing.assert_close(result.rgb[:, :, 0, 0], torch.tensor([[0.1, 0.2, 0.3]] * 2))


def test_studio_render_benchmark_reports_its_timing(capsys) -> None:
    """`pippo-data bench-studio` (render speed is measured there, not asserted in a test)."""
    from pippo_lightning.cli.data import main as data_main

    assert data_main(["bench-studio", "--resolution", "8", "--subjects", "1"]) == 0
    timing = json.loads(capsys.readouterr().out)
    assert timing["resolution"] == 8 and timing["subjects"] == 1
    assert timing["views_per_subject"] == 25  # 3 rings of 8 + the reference camera
    assert timing["median_subject_s"] > 0 and timing["views_per_s"] > 0
