"""`pippo-data validate`: every kind of broken file is named, every problem reported, no crash."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pippo_lightning.cli.data import main
from pippo_lightning.data.convert import npy_to_shards
from pippo_lightning.data.npy_io import read_npy_sample, write_npy_sample
from pippo_lightning.data.schema import SampleError
from pippo_lightning.data.validate import validate_path
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample

STUDIO = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))
Sample = dict[str, Any]


@pytest.fixture(scope="module")
def good() -> Sample:
    return render_subject_sample(SubjectParams.sample(11), STUDIO)


def _copy(sample: Sample) -> Sample:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in sample.items()}


def _with(key: str, change: Callable[[Any], Any]) -> Callable[[Sample], Sample]:
    def edit(sample: Sample) -> Sample:
        sample[key] = change(sample[key])
        return sample

    return edit


def _without(key: str) -> Callable[[Sample], Sample]:
    def edit(sample: Sample) -> Sample:
        del sample[key]
        return sample

    return edit


def _scale_rotation(e: torch.Tensor) -> torch.Tensor:
    e[1, :3, :3] *= 1.2
    return e


def _reflect(e: torch.Tensor) -> torch.Tensor:
    e[0, 0, :] *= -1  # x axis flipped: still orthonormal, determinant -1
    return e


def _turn_around(e: torch.Tensor) -> torch.Tensor:
    # Camera 2 keeps its position but looks the other way: the head ends up behind it.
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    rotation = e[2, :3, :3].clone()
    centre = -rotation.T @ e[2, :3, 3]
    e[2, :3, :3] = flip @ rotation
    e[2, :3, 3] = -(flip @ rotation) @ centre
    return e


def _nan(x: torch.Tensor) -> torch.Tensor:
    x[0, 0, 0, 3, 3] = float("nan")
    return x


def _no_head(sample: Sample) -> Sample:
    del sample["head_center"]
    sample["kpts"][3] = 0.0  # view 3 does not see the anchor
    return sample


#: name -> (edit of a good sample, text the report must contain for that file)
BROKEN_SAMPLES: dict[str, tuple[Callable[[Sample], Sample], str]] = {
    "missing_key": (_without("kpts"), "missing key 'kpts'"),
    "wrong_shape": (
        _with("cam_pose", lambda x: x[:, 0]),
        "expected shape [NV=8, 1, 16], found [8, 16]",
    ),
    "view_count_mismatch": (
        _with("kpts", lambda x: x[:-1]),
        "expected shape [NV=8, 1, 3, H=16, W=16], found [7",
    ),
    "frame_axis": (
        _with("image", lambda x: x.expand(-1, 2, -1, -1, -1)),
        "expected shape [NV, 1, 3, H, W], found [8, 2",
    ),
    "wrong_dtype": (
        _with("cam_extrin", lambda x: x.long()),
        "expected dtype floating point, found torch.int64",
    ),
    "wrong_type": (
        _with("cam_intrin", lambda x: x.tolist()),
        "expected a tensor or array, found list",
    ),
    "non_finite": (_with("plucker", _nan), "1 non-finite values"),
    "pixel_range": (
        _with("image", lambda x: x / 127.5 - 1),
        "expected values in [0, 255], found [-0.9",
    ),
    "not_orthonormal": (
        _with("cam_extrin", _scale_rotation),
        "rotation not orthonormal in views [1]",
    ),
    "reflection": (_with("cam_extrin", _reflect), "reflection (det = -1) in views [0]"),
    "homogeneous_row": (
        _with(
            "cam_extrin",
            lambda e: e.index_put_(
                (torch.tensor([4]), torch.tensor([3]), torch.tensor([2])), torch.tensor(1.0)
            ),
        ),
        "last row must be [0, 0, 0, 1], found [0.0, 0.0, 1.0, 1.0] in views [4]",
    ),
    "normalised_intrinsics": (
        _with("cam_intrin", lambda k: k / torch.tensor([16.0, 16.0, 1.0])[:, None]),
        "intrinsics look normalised by the image size",
    ),
    "principal_point": (
        _with(
            "ref_cam_intrin",
            lambda k: k.index_put_(
                (torch.tensor([0]), torch.tensor([0]), torch.tensor([2])), torch.tensor(48.0)
            ),
        ),
        "principal point outside the 16x16 image in views [0]: found (cx, cy) = (48",
    ),
    "negative_focal": (
        _with("cam_intrin", lambda k: k * torch.tensor([-1.0, 1.0, 1.0])[:, None]),
        "focal lengths must be > 0",
    ),
    "head_behind_camera": (
        _with("cam_extrin", _turn_around),
        "the head is behind the camera in views [2]",
    ),
    "head_outside_image": (
        _with("head_center", lambda h: h + torch.tensor([0.0, 3.0, 0.0])),
        "the head projects outside the 16x16 image",
    ),
    "empty_anchor": (_no_head, "anchor image empty (max 0 < 8.0) in views ["),
    "zero_direction": (
        _with("head_forward", lambda v: v * 0),
        "expected a unit vector, found length 0",
    ),
}


def _write_garbage(directory: Path, good: Sample) -> dict[str, str]:
    """Files that are not samples at all; returns name -> expected text."""
    write_npy_sample(directory / "intact.npy", good)
    data = (directory / "intact.npy").read_bytes()
    (directory / "truncated.npy").write_bytes(data[: len(data) // 2])
    (directory / "intact.npy").unlink()
    (directory / "empty.npy").write_bytes(b"")
    (directory / "text.npy").write_text("not a numpy file\n")
    np.save(directory / "array.npy", np.zeros((2, 3), np.float32))
    np.save(directory / "list.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    return {
        "truncated.npy": "cannot read the sample file",
        "empty.npy": "cannot read the sample file",
        "text.npy": "cannot read the sample file",
        "array.npy": "expected a pickled dict (np.save of a dict), found array [2, 3] float32",
        "list.npy": "expected a pickled dict (np.save of a dict), found array [2] object",
    }


class _Hostile:
    """Unpickling this would run a shell command."""

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("touch hacked",))


def test_every_kind_of_broken_file_is_named_and_nothing_crashes(
    good: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    expected = _write_garbage(root, good)
    for name, (edit, text) in BROKEN_SAMPLES.items():
        write_npy_sample(root / f"{name}.npy", edit(_copy(good)))
        expected[f"{name}.npy"] = text
    hostile = root / "hostile.npy"
    np.save(hostile, np.array({"image": _Hostile()}, dtype=object), allow_pickle=True)
    expected["hostile.npy"] = "refusing to load"
    write_npy_sample(root / "good.npy", good)
    monkeypatch.chdir(tmp_path)

    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    for name, text in expected.items():
        lines = [line for line in out.splitlines() if f"{name}:" in line or f"{name}#" in line]
        assert any(text in line for line in lines), f"{name}: {text!r} not in {lines}"
    assert "good.npy" not in out
    assert not (tmp_path / "hacked").exists()  # the hostile pickle never ran
    assert len(expected) == 24  # distinct kinds of broken file
    report = validate_path(root)
    assert report.samples == len(expected) + 1


def test_every_problem_of_one_file_is_reported(good: Sample, tmp_path: Path) -> None:
    sample = _copy(good)
    del sample["ref_kpts"]
    _nan(sample["plucker"])
    _scale_rotation(sample["cam_extrin"])
    sample["image"] = sample["image"] / 255.0  # [0, 1]: a warning
    write_npy_sample(tmp_path / "many.npy", sample)
    report = validate_path(tmp_path / "many.npy")
    messages = [str(p) for p in report.problems]
    assert any("missing key 'ref_kpts'" in m for m in messages)
    assert any("'plucker': 1 non-finite" in m for m in messages)
    assert any("rotation not orthonormal" in m for m in messages)
    assert any("look like [0, 1]" in p.message for p in report.warnings)


def test_clean_data_passes_and_warnings_fail_only_when_strict(
    good: Sample, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_npy_sample(tmp_path / "good.npy", good)
    assert main(["validate", str(tmp_path / "good.npy")]) == 0
    stale = _copy(good)
    stale["cam_pose"][0, 0, 12] += 0.5  # fx/W no longer matches K
    write_npy_sample(tmp_path / "pose.npy", stale)
    assert main(["validate", str(tmp_path / "pose.npy")]) == 0
    assert "warning:" in capsys.readouterr().out
    assert main(["validate", "--strict", str(tmp_path / "pose.npy")]) == 1
    capsys.readouterr()
    assert main(["validate", "--json", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and report["errors"] == 0 and report["warnings"] == 1


def test_broken_shard_directories_are_reported(good: Sample, tmp_path: Path) -> None:
    npy = tmp_path / "npy"
    npy.mkdir()
    for index in range(3):
        write_npy_sample(npy / f"s{index}.npy", good)
    for name in ("bad_index", "missing_shard", "truncated_shard", "good"):
        npy_to_shards(npy, tmp_path / name, shard_size=2)
    (tmp_path / "bad_index/index.json").write_text("{not json")
    (tmp_path / "missing_shard/shard-00001.safetensors").unlink()
    shard = tmp_path / "truncated_shard/shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    report = validate_path(tmp_path)
    text = "\n".join(str(p) for p in report.errors)
    assert "bad_index/index.json: cannot read the shard index" in text
    assert "missing_shard/shard-00001.safetensors: cannot open the shard" in text
    assert "truncated_shard/shard-00000.safetensors: cannot open the shard" in text
    assert "good/" not in text
    assert len(report.errors) == 3


def test_loader_errors_list_all_structural_problems(good: Sample, tmp_path: Path) -> None:
    sample = _copy(good)
    del sample["kpts"]
    sample["cam_extrin"] = sample["cam_extrin"].long()
    write_npy_sample(tmp_path / "two.npy", sample)
    from pippo_lightning.data import load_sample

    with pytest.raises(SampleError) as error:
        load_sample(tmp_path / "two.npy")
    assert "missing key 'kpts'" in str(error.value) and "torch.int64" in str(error.value)
    assert read_npy_sample(tmp_path / "two.npy")["cam_extrin"].dtype == torch.int64


def test_hostile_pickles_are_refused_by_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.npy"
    with path.open("wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        pickle.dump(np.array(_Hostile(), dtype=object), stream, protocol=3)
    with pytest.raises(SampleError, match="refusing to load"):
        read_npy_sample(path)
    assert not (tmp_path / "hacked").exists()


def test_a_folder_without_samples_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no samples here")
    report = validate_path(tmp_path)
    assert [p.message for p in report.errors] == [
        "no samples found (*.npy files or shard directories)"
    ]
    assert main(["validate", str(tmp_path / "missing")]) == 1


def test_a_missing_reference_camera_is_a_warning_naming_the_stand_in_and_strict_fails(
    good: Sample, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No ref_cam_intrin/extrin and a ref_cam_pose that decodes to no camera (the original
    release's files may look like this): a warning naming the file, the key and the target
    camera training uses instead; exit 0, and 1 with --strict."""
    sample = _copy(good)
    del sample["ref_cam_intrin"], sample["ref_cam_extrin"]
    sample["ref_cam_pose"] = sample["cam_pose"][5:6] * 2.0  # view 5's pose, in another layout
    sample["cam_pose"] = sample["cam_pose"] * 2.0
    path = tmp_path / "no_reference.npy"
    write_npy_sample(path, sample)

    assert main(["validate", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (line,) = [line for line in lines if "no reference camera" in line]
    assert line.startswith(f"warning: {path}: key 'ref_cam_intrin': no reference camera")
    assert "target view 5" in line and "distance 0" in line
    assert main(["validate", "--strict", str(path)]) == 1
    report = validate_path(path)
    assert not report.errors and report.warnings
