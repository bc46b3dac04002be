"""Sample schema, MultiViewDataset (the batch contract) and MultiViewDataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pippo_lightning.data import (
    EpochSampler,
    MultiViewDataModule,
    MultiViewDataset,
    SampleError,
    check_sample,
    evenly_spaced_views,
    load_sample,
)
from pippo_lightning.data.dataset import BATCH_KEYS
from pippo_lightning.geometry import plucker_rays, project_points
from pippo_lightning.studio.synthetic import StudioConfig, generate_studio

#: 12 dome views every 30 degrees (two staggered rings of 6), 32 px.
STUDIO = StudioConfig(
    num_train_subjects=3, num_val_subjects=1, resolution=32, rings=((0.0, 6), (30.0, 6)), seed=1
)


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_studio(STUDIO, tmp_path_factory.mktemp("data") / "studio")


def raw(path: Path) -> dict:
    return np.load(path, allow_pickle=True).item()


def write(path: Path, sample: dict) -> Path:
    np.save(path, np.array(sample, dtype=object), allow_pickle=True)
    return path


def test_batch_contract_shapes_dtypes_and_ranges(studio: Path) -> None:
    dataset = MultiViewDataset(studio / "train", num_views=3, resolution=16, seed=0)
    item = dataset[1]
    assert tuple(item) == BATCH_KEYS
    nv, h = 3, 16
    expected = {
        "images": (nv, 3, h, h),
        "ref_image": (1, 3, h, h),
        "cam_pose": (nv, 16),
        "ref_cam_pose": (1, 16),
        "plucker": (nv, 6, h, h),
        "ref_plucker": (1, 6, h, h),
        "anchor": (nv, 3, h, h),
        "ref_anchor": (1, 3, h, h),
        "intrinsics": (nv, 3, 3),
        "extrinsics": (nv, 4, 4),
        "ref_intrinsics": (1, 3, 3),
        "ref_extrinsics": (1, 4, 4),
        "azimuth_deg": (nv,),
    }
    for key, shape in expected.items():
        assert tuple(item[key].shape) == shape, key
        assert item[key].dtype == torch.float32, key
    for key in ("images", "ref_image", "anchor", "ref_anchor"):
        assert float(item[key].min()) >= -1.0 and float(item[key].max()) <= 1.0, key
    assert float(item["anchor"].min()) == -1.0  # black anchor background maps to -1
    assert bool(((item["azimuth_deg"] >= 0) & (item["azimuth_deg"] < 360)).all())
    assert item["index"] == 1


def test_fixed_views_are_evenly_spaced_and_stable(studio: Path) -> None:
    dataset = MultiViewDataset(studio / "val", num_views=4, resolution=32, view_sampling="fixed")
    item = dataset[0]
    torch.testing.assert_close(
        item["azimuth_deg"], torch.tensor([0.0, 90.0, 180.0, 270.0]), atol=1e-3, rtol=0
    )
    dataset.set_epoch(5)
    again = dataset[(0, 9)]
    torch.testing.assert_close(again["images"], item["images"])


def test_random_views_are_reproducible_from_seed_epoch_and_index(studio: Path) -> None:
    def views(seed: int, key: int | tuple[int, int]) -> list[float]:
        dataset = MultiViewDataset(studio / "train", num_views=4, resolution=16, seed=seed)
        return dataset[key]["azimuth_deg"].tolist()

    assert views(0, (0, 0)) == views(0, (0, 0))
    assert views(0, 0) == views(0, (0, 0))  # plain keys use the dataset's epoch (0)
    draws = {tuple(views(0, (0, epoch))) for epoch in range(6)}
    assert len(draws) > 1  # a new epoch draws new views
    assert {tuple(views(seed, (0, 0))) for seed in range(6)} != {tuple(views(0, (0, 0)))}
    dataset = MultiViewDataset(studio / "train", num_views=4, resolution=16, seed=0)
    dataset.set_epoch(3)
    assert dataset[0]["azimuth_deg"].tolist() == views(0, (0, 3))


def test_missing_key_raises_sample_error_naming_file_and_key(studio: Path, tmp_path: Path) -> None:
    sample = raw(studio / "train/subject_00000.npy")
    del sample["kpts"]
    path = write(tmp_path / "broken.npy", sample)
    with pytest.raises(SampleError, match=r"broken\.npy: missing key 'kpts'"):
        MultiViewDataset([path], num_views=2, resolution=16)[0]


def test_wrong_shape_raises_with_expected_and_found(studio: Path, tmp_path: Path) -> None:
    sample = raw(studio / "train/subject_00000.npy")
    sample["cam_pose"] = sample["cam_pose"][:, 0]  # drop the frame axis: [NV, 16]
    path = write(tmp_path / "shape.npy", sample)
    with pytest.raises(SampleError) as error:
        load_sample(path)
    message = str(error.value)
    assert "shape.npy" in message and "'cam_pose'" in message
    assert "[NV=12, 1, 16]" in message and "found [12, 16]" in message


def test_wrong_dtype_and_non_finite_values_are_reported(studio: Path) -> None:
    sample = raw(studio / "train/subject_00000.npy")
    bad_dtype = {**sample, "cam_extrin": sample["cam_extrin"].long()}
    with pytest.raises(
        SampleError, match="'cam_extrin': expected dtype floating point, found torch.int64"
    ):
        check_sample(bad_dtype, "x.npy")
    plucker = sample["plucker"].clone()
    plucker[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(SampleError, match="'plucker': 1 non-finite"):
        check_sample({**sample, "plucker": plucker}, "x.npy")


def test_unreadable_file_raises_sample_error(tmp_path: Path) -> None:
    path = tmp_path / "truncated.npy"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SampleError, match=r"truncated\.npy: cannot read"):
        load_sample(path)
    np.save(tmp_path / "array.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(
        SampleError, match=r"expected a pickled dict .* found array \[2, 3\] float32"
    ):
        load_sample(tmp_path / "array.npy")


def test_numpy_arrays_video_alias_and_3x4_cameras_are_accepted(
    studio: Path, tmp_path: Path
) -> None:
    original = studio / "train/subject_00002.npy"
    sample = {
        k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in raw(original).items()
    }
    sample["video"] = sample.pop("image").astype(np.uint8)
    sample["cam_extrin"] = sample["cam_extrin"][:, :3]
    sample["cam_intrin"] = np.concatenate(
        [sample["cam_intrin"], np.zeros((12, 3, 1), np.float32)], axis=-1
    )
    converted = write(tmp_path / "numpy.npy", sample)
    a = MultiViewDataset([original], num_views=4, resolution=24, view_sampling="fixed")[0]
    b = MultiViewDataset([converted], num_views=4, resolution=24, view_sampling="fixed")[0]
    for key in BATCH_KEYS[:-1]:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_asking_for_more_views_than_the_sample_has_names_file_and_counts(studio: Path) -> None:
    dataset = MultiViewDataset(studio / "val", num_views=13, resolution=16)
    with pytest.raises(
        SampleError, match=r"subject_00000\.npy: asked for 13 views but the sample has 12"
    ):
        dataset[0]


def test_resize_keeps_intrinsics_consistent_with_the_pixels(studio: Path) -> None:
    native = MultiViewDataset(studio / "val", num_views=6, resolution=32, view_sampling="fixed")[0]
    resized = MultiViewDataset(studio / "val", num_views=6, resolution=64, view_sampling="fixed")[0]
    head = raw(studio / "val/subject_00000.npy")["head_center"]
    uv_native, _ = project_points(head.expand(6, 1, 3), native["intrinsics"], native["extrinsics"])
    uv_resized, _ = project_points(
        head.expand(6, 1, 3), resized["intrinsics"], resized["extrinsics"]
    )
    torch.testing.assert_close(uv_resized, 2.0 * uv_native)
    for view in range(6):
        col, row = uv_resized[view, 0].long().tolist()
        # The anchor (black = -1 elsewhere) is drawn where the resized cameras put the head.
        assert float(resized["anchor"][view, :, row, col].max()) > -0.5
    # Recomputed rays at the native size equal the stored ones; resized ones follow the new K.
    stored = raw(studio / "val/subject_00000.npy")
    index = [
        int((stored["cam_extrin"] - e).abs().amax(dim=(1, 2)).argmin())
        for e in native["extrinsics"]
    ]
    torch.testing.assert_close(native["plucker"], stored["plucker"][index, 0], atol=1e-5, rtol=0)
    rays = plucker_rays(resized["intrinsics"], resized["extrinsics"], 64, 64)
    torch.testing.assert_close(resized["plucker"], rays)


def test_stored_plucker_source_resizes_the_file_maps(studio: Path) -> None:
    dataset = MultiViewDataset(
        studio / "val", num_views=2, resolution=32, view_sampling="fixed", plucker_source="stored"
    )
    recomputed = MultiViewDataset(studio / "val", num_views=2, resolution=32, view_sampling="fixed")
    torch.testing.assert_close(dataset[0]["plucker"], recomputed[0]["plucker"], atol=1e-5, rtol=0)


def test_cache_in_memory_loads_each_file_once(
    studio: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = MultiViewDataset(studio / "train", num_views=2, resolution=16, cache_in_memory=True)
    reads: list[int] = []
    real = cached.source.read
    monkeypatch.setattr(cached.source, "read", lambda index: reads.append(index) or real(index))
    for _ in range(3):
        cached[0]
    assert reads == [0]


def test_evenly_spaced_views_picks_nearest_distinct_azimuths() -> None:
    azimuth = torch.tensor([10.0, 100.0, 355.0, 185.0, 270.0, 90.0])
    assert evenly_spaced_views(azimuth, 4).tolist() == [2, 5, 3, 4]
    assert sorted(evenly_spaced_views(azimuth, 6).tolist()) == list(range(6))


def test_views_at_a_fixed_step_form_an_arc_from_the_reference() -> None:
    azimuth = torch.arange(0.0, 360.0, 5.0)  # a 72-camera ring, 5 degrees apart
    arc = evenly_spaced_views(azimuth, 4, step_deg=15.0)
    assert azimuth[arc].tolist() == [0.0, 15.0, 30.0, 45.0]
    assert azimuth[evenly_spaced_views(azimuth, 4)].tolist() == [0.0, 90.0, 180.0, 270.0]
    spread = evenly_spaced_views(azimuth, 3, start_deg=100.0, step_deg=10.0)
    assert azimuth[spread].tolist() == [100.0, 110.0, 120.0]


def test_fixed_view_step_is_used_by_the_dataset_and_checked(studio: Path) -> None:
    whole = MultiViewDataset(studio / "val", num_views=2, resolution=16, view_sampling="fixed")
    arc = MultiViewDataset(
        studio / "val", num_views=2, resolution=16, view_sampling="fixed", view_step_deg=90.0
    )
    assert whole[0]["azimuth_deg"].tolist() == pytest.approx([0.0, 180.0], abs=1e-3)
    assert arc[0]["azimuth_deg"].tolist() == pytest.approx([0.0, 90.0], abs=1e-3)
    with pytest.raises(ValueError, match="view_step_deg=90.0 x num_views=8"):
        MultiViewDataset(studio / "val", num_views=8, resolution=16, view_step_deg=90.0)


def test_epoch_sampler_is_reproducible_and_reshuffles_per_epoch() -> None:
    sampler = EpochSampler(20, seed=3)
    first = list(sampler)
    assert first == list(EpochSampler(20, seed=3))
    assert sorted(index for index, _ in first) == list(range(20))
    sampler.set_epoch(1)
    second = list(sampler)
    assert all(epoch == 1 for _, epoch in second)
    assert [i for i, _ in second] != [i for i, _ in first]


def test_datamodule_generates_the_studio_and_serves_train_and_val_batches(tmp_path: Path) -> None:
    root = tmp_path / "studio"
    datamodule = MultiViewDataModule(
        root=str(root),
        synthetic=STUDIO,  # as Hydra builds it from data.synthetic._target_
        num_views=2,
        val_num_views=4,
        resolution=32,
        batch_size=2,
        val_batch_size=1,
        num_workers=0,
        seed=0,
    )
    datamodule.prepare_data()
    assert (root / "manifest.json").is_file()
    datamodule.setup("fit")
    train = next(iter(datamodule.train_dataloader()))
    assert train["images"].shape == (2, 2, 3, 32, 32)
    assert train["ref_image"].shape == (2, 1, 3, 32, 32)
    assert train["cam_pose"].shape == (2, 2, 16)
    assert train["plucker"].shape == (2, 2, 6, 32, 32)
    assert train["index"].shape == (2,)
    val = next(iter(datamodule.val_dataloader()))
    assert val["images"].shape == (1, 4, 3, 32, 32)
    torch.testing.assert_close(
        val["azimuth_deg"][0], torch.tensor([0.0, 90.0, 180.0, 270.0]), atol=1e-3, rtol=0
    )

    # Same seed, same shuffled order and views; the val loader is fixed.
    again = MultiViewDataModule(
        root=str(root), synthetic=STUDIO, num_views=2, resolution=32, batch_size=2
    )
    again.setup("fit")
    repeat = next(iter(again.train_dataloader()))
    assert torch.equal(repeat["index"], train["index"])
    torch.testing.assert_close(repeat["images"], train["images"])


def test_datamodule_needs_a_root_or_a_studio() -> None:
    with pytest.raises(ValueError, match="root"):
        MultiViewDataModule()


def test_view_sampling_strategy_and_count_are_configurable_per_split(studio: Path) -> None:
    datamodule = MultiViewDataModule(
        root=str(studio),
        num_views=4,
        val_num_views=3,
        resolution=16,
        view_sampling="spread",
        val_view_sampling="random",
    )
    datamodule.setup("fit")
    starts = set()
    for epoch in range(6):
        azimuth = sorted(datamodule.train_dataset[(0, epoch)]["azimuth_deg"].tolist())
        gaps = np.diff([*azimuth, azimuth[0] + 360.0])
        # A random turnaround: evenly spaced (views every 30 degrees: within 60..120 apart).
        assert len(azimuth) == 4 and all(60.0 <= gap <= 120.0 for gap in gaps), azimuth
        starts.add(azimuth[0])
    assert len(starts) > 1
    assert datamodule.val_dataset.view_sampling == "random"
    assert datamodule.val_dataset.num_views == 3
    with pytest.raises(ValueError, match="view_sampling must be one of"):
        MultiViewDataModule(root=str(studio), view_sampling="nearest")


def test_original_files_without_reference_cameras_decode_them_from_ref_cam_pose(
    studio: Path, tmp_path: Path
) -> None:
    sample = raw(studio / "val/subject_00000.npy")
    original = {k: v for k, v in sample.items() if k not in ("ref_cam_intrin", "ref_cam_extrin")}
    path = write(tmp_path / "original.npy", original)
    a = MultiViewDataset(studio / "val", num_views=4, resolution=16, view_sampling="fixed")[0]
    b = MultiViewDataset([path], num_views=4, resolution=16, view_sampling="fixed")[0]
    for key in BATCH_KEYS[:-1]:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_without_a_decodable_reference_camera_the_nearest_target_camera_stands_in(
    studio: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No ref_cam_intrin/extrin and a ref_cam_pose in another layout (here every pose vector
    doubled, so no rotation decodes): the target view whose cam_pose equals ref_cam_pose is
    the reference camera, found exactly; the sample loads and says so once."""
    import pippo_lightning.data.preparation as preparation_module

    sample = raw(studio / "val/subject_00000.npy")
    original = {k: v for k, v in sample.items() if k not in ("ref_cam_intrin", "ref_cam_extrin")}
    original["cam_pose"] = sample["cam_pose"] * 2.0
    original["ref_cam_pose"] = original["cam_pose"][7:8].clone()
    path = write(tmp_path / "other_layout.npy", original)
    preparation_module._REFERENCE_FALLBACK_LOGGED = False
    with caplog.at_level("WARNING", logger="pippo_lightning.data.preparation"):
        item = MultiViewDataset([path], num_views=4, resolution=32, view_sampling="fixed")[0]
    (record,) = [r for r in caplog.records if "no reference camera" in r.getMessage()]
    assert "other_layout.npy: key 'ref_cam_intrin'" in record.getMessage()
    assert "target view 7" in record.getMessage()

    view = torch.as_tensor(sample["cam_extrin"][7]).float()
    torch.testing.assert_close(item["ref_extrinsics"][0], view)
    torch.testing.assert_close(
        item["ref_intrinsics"][0], torch.as_tensor(sample["cam_intrin"][7]).float()
    )
    # "fixed" views start at the reference azimuth: view 7 itself comes first, at 0 degrees.
    assert float(item["azimuth_deg"][0]) == pytest.approx(0.0, abs=1e-3)
    torch.testing.assert_close(item["ref_plucker"][0], item["plucker"][0])
    # The model's camera input is the file's ref_cam_pose, untouched.
    torch.testing.assert_close(
        item["ref_cam_pose"], torch.as_tensor(original["ref_cam_pose"][:, 0]).float()
    )


def test_a_sample_with_no_camera_to_stand_in_for_the_reference_is_refused(
    studio: Path, tmp_path: Path
) -> None:
    sample = raw(studio / "val/subject_00000.npy")
    broken = {k: v for k, v in sample.items() if k not in ("ref_cam_intrin", "ref_cam_extrin")}
    broken["ref_cam_pose"] = np.random.default_rng(0).random((1, 1, 16), dtype=np.float32)
    broken["cam_pose"] = sample["cam_pose"][:, 0]  # wrong shape: no pose to compare with
    with pytest.raises(SampleError, match=r"no target camera can stand in"):
        load_sample(write(tmp_path / "unknown.npy", broken))
