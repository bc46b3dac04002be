"""`pippo-data prepare`: studio subjects exported as plain captures come back as the renderer made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pippo_lightning.captures.capture import CaptureError, Conventions, read_cameras
from pippo_lightning.captures.crops import CropBox, crop_and_resize, crop_box_intrinsics
from pippo_lightning.captures.prepare import prepare
from pippo_lightning.captures.sample import PrepareConfig
from pippo_lightning.captures.subjects import split_subjects
from pippo_lightning.cli.data import main
from pippo_lightning.data import MultiViewDataModule
from pippo_lightning.data.npy_io import read_npy_sample
from pippo_lightning.data.validate import validate_path
from pippo_lightning.geometry import camera_centers, plucker_rays, project_points
from pippo_lightning.studio.export import export_studio_subject
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample

RINGS = ((0.0, 4), (30.0, 4))
#: Rendered at 48 px and exported; prepare at 24 px must match a 24 px render with 2x2
#: supersampling (its sub-pixel rays are exactly the 48 px pixel centres).
EXPORT = StudioConfig(resolution=48, rings=RINGS)
TARGET = StudioConfig(resolution=24, rings=RINGS, supersample=2)
SEED = 7
GEOMETRY_KEYS = ("cam_intrin", "cam_extrin", "ref_cam_intrin", "ref_cam_extrin", "cam_pose")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("captures")
    json_sample = export_studio_subject(EXPORT, SEED, root / "json" / "subject", "json")
    mm = Conventions(world_unit="mm")
    export_studio_subject(
        EXPORT, SEED, root / "krt" / "subject", "krt", mm, "keypoints", sample=json_sample
    )
    return {"root": root, "sample": json_sample}


def max_errors(prepared: dict[str, Any], truth: dict[str, Any]) -> dict[str, float]:
    keys = ("image", "ref_image", "plucker", "ref_plucker", "kpts", "ref_kpts", *GEOMETRY_KEYS)
    return {k: float((prepared[k].float() - truth[k].float()).abs().max()) for k in keys}


def test_prepare_recovers_images_cameras_rays_and_anchors_exactly_at_native_size(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    config = PrepareConfig(
        resolution=48, world="as_is", reference="ref", anchor_supersample=1, val_fraction=0
    )
    prepare(exported["root"] / "json", tmp_path / "out", config)
    prepared = read_npy_sample(tmp_path / "out/train/subject__0.npy")
    errors = max_errors(prepared, exported["sample"])
    assert errors["image"] == 0 and errors["ref_image"] == 0
    # Anchors are re-rendered from cameras read back in float64: identical except for rays that
    # graze a marker's edge, where float32 vs float64 can flip a pixel.
    assert float((prepared["kpts"] != exported["sample"]["kpts"]).float().mean()) < 2e-3
    assert errors["plucker"] < 1e-5 and errors["ref_plucker"] < 1e-5
    assert max(errors[k] for k in GEOMETRY_KEYS) < 1e-6
    assert prepared["camera_names"] == [f"cam{i:02d}" for i in range(8)]
    assert prepared["ref_camera"] == "ref"


def test_prepare_from_krt_in_mm_with_keypoints_matches_a_supersampled_render(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    config = PrepareConfig(
        resolution=24, world="as_is", reference="ref", anchor_supersample=2, val_fraction=0
    )
    prepare(exported["root"] / "krt", tmp_path / "out", config, Conventions(world_unit="mm"))
    prepared = read_npy_sample(tmp_path / "out/train/subject__0.npy")
    truth = render_subject_sample(SubjectParams.sample(SEED), TARGET)
    errors = max_errors(prepared, truth)
    # Area-averaging 8-bit pixels vs rounding the average of unrounded ones: at most one level.
    assert errors["image"] <= 1.0 and errors["ref_image"] <= 1.0
    assert float((prepared["image"] - truth["image"]).abs().mean()) < 0.1
    assert errors["plucker"] < 1e-5 and errors["ref_plucker"] < 1e-5
    differing = (prepared["kpts"] != truth["kpts"]).float().mean()
    assert float(differing) < 2e-3  # anchors: identical but for float noise at marker edges
    assert max(errors[k] for k in GEOMETRY_KEYS) < 1e-5
    for key in ("head_center", "head_forward", "head_up"):
        torch.testing.assert_close(prepared[key], truth[key], atol=1e-5, rtol=0)


def test_canonical_world_puts_the_head_at_the_origin_facing_z_and_keeps_the_pixels(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    config = PrepareConfig(resolution=24, reference="ref", val_fraction=0, previews=0)
    prepare(exported["root"] / "json", tmp_path / "canonical", config)
    canonical = read_npy_sample(tmp_path / "canonical/train/subject__0.npy")
    as_is = PrepareConfig(**{**config.__dict__, "world": "as_is"})
    prepare(exported["root"] / "json", tmp_path / "as_is", as_is)
    original = read_npy_sample(tmp_path / "as_is/train/subject__0.npy")
    for key in ("image", "ref_image", "kpts", "cam_intrin", "face_image"):
        assert torch.equal(canonical[key], original[key]), key
    torch.testing.assert_close(canonical["head_center"], torch.zeros(3))
    forward = canonical["head_forward"]
    assert float(forward[2]) > 0.9 and abs(float(forward[0])) < 1e-5  # facing +z, level in x
    assert float(canonical["head_up"][1]) > 0.9
    distance = (camera_centers(canonical["cam_extrin"]) - canonical["head_center"]).norm(dim=-1)
    expected = (camera_centers(original["cam_extrin"]) - original["head_center"]).norm(dim=-1)
    torch.testing.assert_close(distance, expected, atol=1e-5, rtol=0)
    rays = plucker_rays(canonical["cam_intrin"], canonical["cam_extrin"], 24, 24)
    torch.testing.assert_close(canonical["plucker"][:, 0], rays, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("conventions", "fix"),
    [
        (Conventions(extrinsics="camera_to_world"), "Pass --extrinsics camera_to_world"),
        (Conventions(axes="opengl"), "Pass --axes opengl"),
        (
            Conventions(extrinsics="camera_to_world", axes="opengl"),
            "Pass --extrinsics camera_to_world --axes opengl",
        ),
        (Conventions(intrinsics_units="normalized"), "pass --intrinsics-units normalized"),
    ],
)
def test_convention_mistakes_are_caught_and_the_named_fix_works(
    conventions: Conventions, fix: str, tmp_path: Path
) -> None:
    studio = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))
    capture = tmp_path / "capture" / "s"
    truth = export_studio_subject(studio, 3, capture, "json", conventions)
    cameras = json.loads((capture / "cameras.json").read_text())
    for key in ("extrinsics", "axes", "intrinsics_units"):
        del cameras[key]  # the file no longer says how it is written: defaults are assumed
    (capture / "cameras.json").write_text(json.dumps(cameras))
    config = PrepareConfig(
        resolution=16, world="as_is", reference="ref", val_fraction=0, previews=0
    )
    with pytest.raises(CaptureError, match=fix):
        prepare(tmp_path / "capture", tmp_path / "wrong", config)
    assert not (tmp_path / "wrong").exists()
    prepare(tmp_path / "capture", tmp_path / "right", config, conventions)
    prepared = read_npy_sample(tmp_path / "right/train/s__0.npy")
    for key in ("cam_extrin", "cam_intrin", "ref_cam_extrin"):
        torch.testing.assert_close(prepared[key], truth[key], atol=1e-5, rtol=0)


def test_cli_prepare_reports_the_guard_as_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    studio = StudioConfig(resolution=16, rings=((0.0, 4),))
    export_studio_subject(studio, 1, tmp_path / "cap" / "s", "json", Conventions(axes="opengl"))
    cameras = json.loads((tmp_path / "cap/s/cameras.json").read_text())
    cameras["axes"] = "opencv"
    (tmp_path / "cap/s/cameras.json").write_text(json.dumps(cameras))
    assert main(["prepare", str(tmp_path / "cap"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--axes opengl" in err[0]
    args = ["prepare", str(tmp_path / "cap"), "--out", str(tmp_path / "o"), "--axes", "opengl"]
    assert main([*args, "--resolution", "16", "--val-fraction", "0"]) == 0


def test_head_crop_centres_the_head_and_face_crop_and_most_frontal_reference(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    config = PrepareConfig(
        resolution=32, crop="head", head_crop_size=0.6, face_resolution=24, val_fraction=0
    )
    prepare(exported["root"] / "json", tmp_path / "out", config)
    sample = read_npy_sample(tmp_path / "out/train/subject__0.npy")
    head, truth = sample["head_center"], exported["sample"]
    names = [f"cam{i:02d}" for i in range(8)] + ["ref"]
    full = dict(zip(names, torch.cat([truth["cam_intrin"], truth["ref_cam_intrin"]])))
    groups = (
        ("cam_intrin", "cam_extrin", 32, torch.stack([full[n] for n in sample["camera_names"]])),
        ("face_cam_intrin", "face_cam_extrin", 24, full[sample["ref_camera"]][None]),
    )
    for k_key, e_key, size, full_k in groups:
        uv, _ = project_points(head.expand(len(sample[k_key]), 1, 3), sample[k_key], sample[e_key])
        # Crop boxes are whole source pixels: the head is off-centre by at most 3/4 of one.
        scale = sample[k_key][:, 0, 0] / full_k[: len(sample[k_key]), 0, 0]  # [N]
        assert bool(((uv[:, 0] - size / 2).abs() <= 0.75 * scale[:, None] + 1e-4).all()), k_key
    rays = plucker_rays(sample["cam_intrin"], sample["cam_extrin"], 32, 32)
    torch.testing.assert_close(sample["plucker"][:, 0], rays)
    # The reference faces the head most directly of all cameras, and is not a target.
    every = torch.cat([truth["cam_extrin"], truth["ref_cam_extrin"]])
    towards = camera_centers(every) - truth["head_center"]
    cosine = (towards / towards.norm(dim=-1, keepdim=True)) @ truth["head_forward"]
    assert sample["ref_camera"] == names[int(cosine.argmax())]
    assert sample["ref_camera"] not in sample["camera_names"]
    assert len(sample["camera_names"]) == 8


def test_crop_and_resize_keeps_a_point_where_the_new_intrinsics_put_it() -> None:
    height, width = 90, 120
    k = torch.tensor([[100.0, 0.0, 61.0], [0.0, 100.0, 44.0], [0.0, 0.0, 1.0]])
    image = np.zeros((height, width, 3), np.uint8)
    image[30:34, 80:84] = 255  # a 4 x 4 block centred on (u, v) = (82, 32)
    for box, size in (
        (CropBox(60, 10, 40), 20),
        (CropBox(70, -20, 80), 40),
        (CropBox(40, 0, 90), 90),
    ):
        out = crop_and_resize(image, box, size, pad_value=0)
        k_out = crop_box_intrinsics(k, box, size)
        # Where the block's centre goes: u' = (u - left) * size / side.
        scale = size / box.side
        expected = torch.tensor([(82.0 - box.left) * scale, (32.0 - box.top) * scale])
        weight = out.mean(axis=2)
        rows, cols = np.mgrid[0:size, 0:size] + 0.5
        centroid = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, expected.numpy(), atol=0.05)
        torch.testing.assert_close(
            k_out[:2, 2], (k[:2, 2] - torch.tensor([box.left, box.top])) * scale
        )


def test_subjects_are_split_without_overlap_and_the_output_trains(tmp_path: Path) -> None:
    studio = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))
    for index in range(3):
        export_studio_subject(studio, 20 + index, tmp_path / "caps" / f"person_{index}", "json")
    config = PrepareConfig(
        resolution=16, val_fraction=0.34, face_resolution=8, previews=1, format="shards"
    )
    report = prepare(tmp_path / "caps", tmp_path / "out", config)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert sorted(manifest["subjects"].values()) == ["train", "train", "val"]
    train = {name.split("__")[0] for name in report.samples["train"]}
    val = {name.split("__")[0] for name in report.samples["val"]}
    assert train and val and not train & val
    previews = sorted((tmp_path / "out/previews").rglob("*.png"))
    assert len(previews) == 2
    import imageio.v3 as iio

    grid = iio.imread(previews[0])
    assert grid.shape == (32, 16 * (2 + 8), 3)  # ref, face, 8 views; rays below
    report = validate_path(tmp_path / "out")
    assert not report.errors, [str(p) for p in report.errors]
    datamodule = MultiViewDataModule(root=str(tmp_path / "out"), num_views=3, resolution=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["images"].shape == (2, 3, 3, 16, 16)
    assert next(iter(datamodule.val_dataloader()))["images"].shape[1] == 3


def test_split_is_stable_and_explicit_val_subjects_win() -> None:
    names = [f"s{i}" for i in range(10)]
    split = split_subjects(names, 0.2)
    assert sorted(split.values()).count("val") == 2
    assert split_subjects(list(reversed(names)), 0.2) == split
    assert split_subjects(names, 0.2, ["s3"]) == {
        n: ("val" if n == "s3" else "train") for n in names
    }
    with pytest.raises(CaptureError, match="not found"):
        split_subjects(names, 0.2, ["nobody"])


def test_a_failed_prepare_leaves_nothing_behind(exported: dict[str, Any], tmp_path: Path) -> None:
    config = PrepareConfig(resolution=16, reference="no_such_camera", val_fraction=0)
    with pytest.raises(CaptureError, match="no camera 'no_such_camera'"):
        prepare(exported["root"] / "json", tmp_path / "out", config)
    assert list(tmp_path.iterdir()) == []


def test_krt_reader_parses_the_ava_layout(tmp_path: Path) -> None:
    (tmp_path / "KRT").write_text(
        "400029\n1000 0 512\n0 1000 334\n0 0 1\n0.1 0.01 0 0 0\n"
        "1 0 0 10\n0 1 0 20\n0 0 1 3000\n\n"
        "400030\n1100 0 500\n0 1100 330\n0 0 1\n0 0 0 0 0\n"
        "0 0 1 0\n0 1 0 0\n-1 0 0 3000\n"
    )
    cameras = read_cameras(tmp_path / "KRT")
    assert cameras.names == ["400029", "400030"]
    assert cameras.intrinsics[1, 0, 0] == 1100 and cameras.distortion[0, 0] == pytest.approx(0.1)
    assert cameras.matrices.shape == (2, 4, 4) and cameras.matrices[0, 2, 3] == 3000
    (tmp_path / "bad").write_text("cam\n1 0 0\n0 1 0\n")
    with pytest.raises(CaptureError, match="has 2 of 7 lines"):
        read_cameras(tmp_path / "bad")


def test_cameras_without_images_are_left_out_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    studio = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))
    export_studio_subject(studio, 4, tmp_path / "cap" / "s", "krt")
    (tmp_path / "cap/s/images/cam03.png").unlink()
    config = PrepareConfig(resolution=16, reference="ref", val_fraction=0, previews=0)
    prepare(tmp_path / "cap", tmp_path / "out", config)
    sample = read_npy_sample(tmp_path / "out/train/s__0.npy")
    assert "cam03" not in sample["camera_names"] and len(sample["camera_names"]) == 7
    assert "cameras without images are ignored: cam03" in caplog.text
