"""Sample formats: the safe .npy reader, shard directories, conversion both ways, DDP splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from safetensors import safe_open
from torch.utils.data import DataLoader

from pippo_lightning.checkpoints.atomic import OutputExistsError, atomic_directory
from pippo_lightning.cli.data import main
from pippo_lightning.data import MultiViewDataset
from pippo_lightning.data.convert import npy_to_shards, shards_to_npy
from pippo_lightning.data.dataset import BATCH_KEYS
from pippo_lightning.data.npy_io import read_npy_sample, write_npy_sample
from pippo_lightning.data.samplers import EpochSampler
from pippo_lightning.data.schema import SampleError
from pippo_lightning.data.shards import ShardReader
from pippo_lightning.data.sources import ShardSource, open_source
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample

STUDIO = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three train samples and one val sample: one render, made distinct by brightening."""
    root = tmp_path_factory.mktemp("formats") / "studio"
    sample = render_subject_sample(SubjectParams.sample(2), STUDIO)
    for split, count in (("train", 3), ("val", 1)):
        (root / split).mkdir(parents=True)
        for index in range(count):
            variant = {**sample, "image": (sample["image"] + index).clamp(0, 255)}
            write_npy_sample(root / split / f"subject_{index:05d}.npy", variant)
    return root


@pytest.fixture(scope="module")
def shards(studio: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return npy_to_shards(studio, tmp_path_factory.mktemp("formats") / "shards", shard_size=2)


def test_npy_to_shards_and_back_is_lossless(studio: Path, shards: Path, tmp_path: Path) -> None:
    assert main(["convert", str(shards), str(tmp_path / "npy"), "--to", "npy"]) == 0
    for original in sorted(studio.glob("*/*.npy")):
        a = np.load(original, allow_pickle=True).item()
        b = read_npy_sample(tmp_path / "npy" / original.parent.name / original.name)
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert b[key].dtype == value.dtype and torch.equal(b[key], value), key
            else:
                assert b[key] == value, key
    # Pixel keys are stored as uint8 in the shards (whole values in [0, 255]), 4x smaller.
    with safe_open(str(shards / "train/shard-00000.safetensors"), "pt") as stored:
        assert stored.get_tensor("000000/image").dtype == torch.uint8
        assert stored.get_tensor("000000/plucker").dtype == torch.float32
    assert [p.name for p in sorted((shards / "train").iterdir())] == [
        "index.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]


def test_numpy_values_and_metadata_survive_the_round_trip(tmp_path: Path) -> None:
    sample = {
        "image": np.arange(24, dtype=np.float32).reshape(1, 1, 3, 2, 4),
        "cam_extrin": torch.eye(4)[None],
        "camera_names": ["a"],
        "subject": "s",
        "count": 3,
    }
    (tmp_path / "in").mkdir()
    write_npy_sample(tmp_path / "in/x.npy", sample)
    npy_to_shards(tmp_path / "in", tmp_path / "shards")
    shards_to_npy(tmp_path / "shards", tmp_path / "out")
    back = read_npy_sample(tmp_path / "out/x.npy")
    assert isinstance(back["image"], np.ndarray) and back["image"].dtype == np.float32
    np.testing.assert_array_equal(back["image"], sample["image"])
    assert torch.equal(back["cam_extrin"], sample["cam_extrin"])
    assert (back["camera_names"], back["subject"], back["count"]) == (["a"], "s", 3)


def test_datasets_read_shards_exactly_like_npy_files(studio: Path, shards: Path) -> None:
    a = MultiViewDataset(studio / "train", num_views=3, resolution=16, view_sampling="fixed")
    b = MultiViewDataset(shards / "train", num_views=3, resolution=16, view_sampling="fixed")
    assert isinstance(b.source, ShardSource) and len(a) == len(b) == 3
    for index in range(3):
        x, y = a[index], b[index]
        assert tuple(y) == BATCH_KEYS
        for key in BATCH_KEYS[:-1]:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)


def test_ddp_ranks_and_workers_read_disjoint_samples(shards: Path) -> None:
    dataset = MultiViewDataset(shards / "train", num_views=2, resolution=16)
    seen: list[list[int]] = []
    for rank in range(2):
        # What Lightning does under DDP: wrap our sampler so each rank gets its own share.
        sampler = DistributedSamplerWrapper(
            EpochSampler(len(dataset), seed=0), num_replicas=2, rank=rank, shuffle=False
        )
        loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=2)
        seen.append([int(batch["index"]) for batch in loader])
    first, second = set(seen[0]), set(seen[1])
    assert len(seen[0]) == len(first) and len(seen[1]) == len(second)  # no repeats in a rank
    # 3 samples over 2 ranks: DistributedSampler pads one rank with a repeat, never more.
    assert first | second == set(range(3)) and len(first & second) <= 1


def test_shard_errors_name_the_file(shards: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "train"
    shutil.copytree(shards / "train", broken)
    (broken / "shard-00001.safetensors").write_bytes(b"garbage")
    reader = ShardReader(broken)
    assert reader.read(0)["image"].shape[0] == 8
    with pytest.raises(SampleError, match=r"shard-00001\.safetensors: cannot open the shard"):
        reader.read(2)
    (broken / "index.json").write_text('{"format": "pippo_lightning.shards", "version": 7}')
    with pytest.raises(SampleError, match="shard format version 7, expected 1"):
        open_source(broken)


def test_atomic_directory_keeps_the_old_output_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "a.txt").write_text("second")
        raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "b.txt").write_text("third")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left over
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert oct(target.stat().st_mode & 0o777) != "0o700"  # not mkdtemp's private mode
