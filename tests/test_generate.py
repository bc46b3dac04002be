"""pippo-generate: orbit cameras, the inference batch, photos, and end-to-end runs on a tiny
checkpoint (trained once per session here and shared with test_evaluate.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

from pippo_lightning.cli.common import CONFIG_DIR
from pippo_lightning.cli.generate import generate
from pippo_lightning.cli.generate import main as generate_main
from pippo_lightning.cli.train import train
from pippo_lightning.data.dataset import MultiViewDataset
from pippo_lightning.data.preparation import load_sample
from pippo_lightning.geometry.cameras import (
    camera_centers,
    dome_cameras,
    relative_azimuth_deg,
)
from pippo_lightning.geometry.orbit import (
    STUDIO_PIVOT,
    CameraFileError,
    cameras_from_file,
    frontal_camera,
    turntable_cameras,
    write_cameras_file,
)
from pippo_lightning.inference.photo import AnchorPose, PhotoError, prepare_photo, read_photo
from pippo_lightning.inference.pipeline import build_batch
from pippo_lightning.stages.config import ConfigError
from tests.conftest import TINY_RUN

# ----------------------------------------------------------------- one tiny trained run


@dataclass(frozen=True)
class TinyRun:
    """A 2-step P3 run at 32 px with 2 views, W&B offline and the turntable-video callback."""

    run_dir: Path
    checkpoint: Path
    data_dir: Path
    train_views: int = 2


_RUNS: dict[str, TinyRun] = {}
TRAIN_SUBJECTS = 2

#: The YAML block proposed for configs/callbacks/default.yaml, as overrides.
VIDEO_CALLBACK = "pippo_lightning.callbacks.media.TurntableVideoLogger"


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Train once per session (memoised here, so test_evaluate.py reuses the same run)."""
    if "run" in _RUNS:
        return _RUNS["run"]
    root = tmp_path_factory.mktemp("tiny_run")
    run_dir, data_dir = root / "run", root / "data"
    overrides = [
        f"paths.root_dir={root}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        *TINY_RUN,
        f"data.synthetic.num_train_subjects={TRAIN_SUBJECTS}",  # one batch: less to render
        "trainer.max_steps=2",
        "logger.wandb.mode=offline",
        "~callbacks.progress_bar",
        f"+callbacks.turntable_video={{_target_:{VIDEO_CALLBACK},"
        f"output_dir:'{run_dir / 'videos'}',fps:4}}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    # What @hydra.main leaves in a run: pippo-generate/-eval read the compressor from it.
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with pytest.MonkeyPatch.context() as env:  # session fixtures run before the autouse env
        env.delenv("WANDB_API_KEY", raising=False)
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_DIR", str(root))
        train(cfg)
    _RUNS["run"] = TinyRun(run_dir, run_dir / "checkpoints" / "last.ckpt", data_dir)
    return _RUNS["run"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return tiny_run(tmp_path_factory)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A non-square JPEG 'photo' (any size must work)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (75, 50, 3), dtype=np.uint8)).save(path)
    return path


def generate_overrides(run: TinyRun, photo: Path, *extra: str) -> list[str]:
    return [
        f"ckpt={run.checkpoint}",
        f"photo={photo}",
        "sampling.num_steps=2",
        "progress=false",
        *extra,
    ]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------- cameras / orbit


def test_turntable_is_the_studio_dome_ring_at_the_same_elevation():
    """Same convention as the training cameras: the dome's 10° ring (8 cameras, staggered by
    15°) is a turntable of 8 views starting at 15°."""
    k_dome, e_dome, azimuth, elevation = dome_cameras(
        ((-15.0, 8), (10.0, 8), (35.0, 8)), 3.2, STUDIO_PIVOT, 36.0, 32, 32
    )
    ring = elevation == 10.0
    k, e = turntable_cameras(8, 10.0, 3.2, STUDIO_PIVOT, start_azimuth_deg=15.0, resolution=32)
    assert torch.allclose(k, k_dome[ring])
    assert torch.allclose(e, e_dome[ring], atol=1e-5)


def test_turntable_view_zero_is_frontal_and_azimuths_grow_counter_clockwise():
    k, e = turntable_cameras(10, elevation_deg=0.0, radius=3.0, pivot=(0.0, 1.0, 0.0))
    centres = camera_centers(e)
    assert torch.allclose(centres[0], torch.tensor([0.0, 1.0, 3.0]), atol=1e-5)
    ref_k, ref_e = frontal_camera()
    azimuth = relative_azimuth_deg(e, ref_e, pivot=torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(azimuth, torch.arange(10) * 36.0, atol=1e-3)
    # every camera looks at the pivot: it projects to the image centre
    pivot_cam = torch.einsum("nij,j->ni", e[:, :3, :3], torch.tensor([0.0, 1.0, 0.0])) + e[:, :3, 3]
    uv = torch.einsum("nij,nj->ni", k, pivot_cam)
    assert torch.allclose(uv[:, :2] / uv[:, 2:], torch.full((10, 2), 32.0), atol=1e-4)


def test_camera_file_round_trips_and_rescales_to_the_model_resolution(tmp_path: Path):
    k, e = turntable_cameras(5, resolution=64)
    path = write_cameras_file(tmp_path / "cams.json", k, e, resolution=64)
    k2, e2 = cameras_from_file(path, resolution=32)
    assert torch.allclose(k2, k / torch.tensor([[2.0], [2.0], [1.0]]), atol=1e-5)
    assert torch.allclose(e2, e, atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read the camera file as JSON"),
        ('{"cameras": []}', "non-empty list"),
        ('{"cameras": [{"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "t": [0, 0, 1]}]}', "no 'R'"),
        (
            '{"cameras": [{"K": [[1,0,0],[0,1,0],[0,0,1]], "R": [[2,0,0],[0,1,0],[0,0,1]],'
            ' "t": [0,0,1]}]}',
            "not a rotation",
        ),
    ],
)
def test_bad_camera_files_name_the_problem(tmp_path: Path, content: str, message: str):
    path = tmp_path / "cams.json"
    path.write_text(content)
    with pytest.raises(CameraFileError, match=message):
        cameras_from_file(path)


# --------------------------------------------------------------------------- photo / batch


def test_any_photo_size_becomes_the_model_resolution(photo: Path):
    pixels = read_photo(photo)  # [3, 75, 50]
    assert pixels.shape == (3, 75, 50)
    ref = prepare_photo(pixels, 32)
    assert ref.shape == (1, 3, 32, 32) and ref.min() >= -1.0 and ref.max() <= 1.0
    # the centred square is rows 12..62 of the 50 columns
    boxed = prepare_photo(pixels, 32, crop_box=[0, 12, 50, 62])
    assert torch.equal(ref, boxed)
    with pytest.raises(PhotoError, match="square"):
        prepare_photo(pixels, 32, crop_box=[0, 0, 50, 60])
    with pytest.raises(PhotoError, match="not inside"):
        prepare_photo(pixels, 32, crop_box=[10, 10, 70, 70])


def test_anchor_settings_are_checked():
    assert AnchorPose.from_mapping({"center": [0, 1.5, 0]}).center == (0.0, 1.5, 0.0)
    with pytest.raises(ConfigError, match="centre"):
        AnchorPose.from_mapping({"centre": [0, 1.5, 0]})
    with pytest.raises(ConfigError, match="3 numbers"):
        AnchorPose.from_mapping({"up": [0, 1]})


def test_transparent_photo_pixels_land_on_the_studio_backdrop(tmp_path: Path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cutout.png")
    pixels = read_photo(tmp_path / "cutout.png")
    assert torch.allclose(pixels, torch.full_like(pixels, 0.85 * 255))


def test_inference_batch_reproduces_the_studio_reference_conditioning(trained: TinyRun):
    """With the studio subject's own head pose and head height, the inference batch's
    reference camera, pose vector, Plücker rays and anchors equal the training data's."""
    studio = next(trained.data_dir.glob("studio-*"))
    raw = load_sample(next((studio / "val").glob("*.npy")))
    item = MultiViewDataset(studio / "val", num_views=2, resolution=32, view_sampling="fixed")[0]
    head = raw["head_center"].float()
    ref_cams = frontal_camera(height=float(head[1]), resolution=32)
    anchor = AnchorPose(
        center=tuple(head.tolist()),
        forward=tuple(raw["head_forward"].float().tolist()),
        up=tuple(raw["head_up"].float().tolist()),
    )
    cams = (item["intrinsics"], item["extrinsics"])
    batch = build_batch(item["ref_image"], ref_cams, cams, anchor, 32, pivot=STUDIO_PIVOT)
    assert torch.allclose(batch["ref_extrinsics"][0], item["ref_extrinsics"], atol=1e-5)
    for key in ("ref_cam_pose", "cam_pose", "ref_plucker", "plucker"):
        assert torch.allclose(batch[key][0], item[key], atol=1e-4), key
    for key in ("anchor", "ref_anchor"):
        assert torch.allclose(batch[key][0], item[key], atol=1e-5), key
    assert torch.allclose(batch["azimuth_deg"][0], item["azimuth_deg"], atol=0.05)
    assert batch["images"].shape == (1, 2, 3, 32, 32)


# ---------------------------------------------------------------------------- end to end


def test_generate_five_times_the_trained_views_is_seeded_and_reproducible(
    trained: TinyRun, photo: Path, compose_config, tmp_path: Path
):
    views = 5 * trained.train_views
    results, frame_bytes = {}, {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = compose_config(
            *generate_overrides(trained, photo, f"num_views={views}", f"seed={seed}"),
            f"paths.output_dir={tmp_path / name}",
            config_name="generate",
        )
        results[name] = generate(cfg)
        frame_bytes[name] = [p.read_bytes() for p in results[name].frames]
    first = results["a"]
    print(
        f"\npippo-generate: {views} views (trained with {first.trained_views}) in one sequence, "
        f"32 px, 2 DDIM steps, CFG 3 + attention gamma 1.5 (scale {first.attention_scale:.4f}): "
        f"{first.generate_s:.2f} s sampling, {first.total_s:.2f} s total, peak memory "
        f"{first.peak_memory_mb:.0f} MiB ({first.memory_kind}, {first.device})"
    )
    assert first.num_views == views and first.trained_views == trained.train_views
    assert len(first.frames) == views and first.grid.is_file() and first.video.path.is_file()
    assert first.attention_scale is not None and math.isfinite(first.peak_memory_mb)
    assert frame_bytes["a"] == frame_bytes["b"]  # byte-identical PNGs for the same seed
    assert frame_bytes["a"] != frame_bytes["c"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["num_views"] == views and summary["sampling"]["seed"] == 0
    # the run trained with space_to_depth=4, whatever the compressor group's default is now
    assert summary["compressor"]["source"].endswith(".hydra/config.yaml")
    assert summary["compressor"]["config"]["space_to_depth"] == 4
    cams = cameras_from_file(tmp_path / "a" / "cameras.json", resolution=32)
    assert cams[0].shape == (views, 3, 3)


def test_generate_entry_point_runs_bump_cfg_from_a_camera_file(
    trained: TinyRun, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """`pippo-generate` end to end (check_overrides → @hydra.main → guarded), in-process."""
    cams = write_cameras_file(tmp_path / "cams.json", *turntable_cameras(3, resolution=32), 32)
    out = tmp_path / "out"
    argv = generate_overrides(
        trained,
        photo,
        "orbit.kind=file",
        f"orbit.file={cams}",
        "sampling.cfg_schedule=bump",
        "crop_box=[0,0,50,50]",
        "progress=true",
        f"hydra.run.dir={out}",
    )
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    monkeypatch.setenv("PIPPO_PROGRESS", "1")  # bars show on terminals only (issue #17)
    generate_main()
    printed = capsys.readouterr().out
    assert "3 in one sequence" in printed and "peak memory" in printed
    # the progress bar (named after the default sampler) reached the last step
    assert "UNIPC" in printed and "2/2" in printed
    assert sorted(p.name for p in (out / "frames").glob("*.png")) == [
        "view_000.png",
        "view_001.png",
        "view_002.png",
    ]
    assert (out / "grid.png").is_file() and (out / "anchors.png").is_file()
    video = json.loads((out / "summary.json").read_text())["video"]
    assert Path(video).suffix in (".mp4", ".gif") and Path(video).is_file()


def test_missing_checkpoint_is_one_error_line_from_the_command(tmp_path: Path, photo: Path):
    missing = tmp_path / "nope.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "pippo_lightning.cli.generate", f"ckpt={missing}", f"photo={photo}"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert str(missing) in line and "does not exist" in line


def test_a_file_that_is_no_checkpoint_is_one_error_line(
    tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    argv = [f"ckpt={bad}", f"photo={photo}", f"hydra.run.dir={tmp_path / 'out'}"]
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    with pytest.raises(SystemExit) as exit_info:
        generate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "is not a readable Lightning checkpoint" in line


def test_a_checkpoint_of_another_compressor_is_one_error_line(
    trained: TinyRun, tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    argv = [*generate_overrides(trained, photo), "compressor_from=config", "compressor=identity"]
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv, f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        generate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "with the configured compressor" in line and "size mismatch" in line


@pytest.mark.parametrize(
    ("photo_name", "content", "message"),
    [
        ("broken.jpg", b"this is not a jpeg", "cannot read photo"),
        ("absent.jpg", None, "does not exist"),
    ],
)
def test_unreadable_photo_is_one_error_line(
    trained: TinyRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    photo_name: str,
    content: bytes | None,
    message: str,
):
    bad = tmp_path / photo_name
    if content is not None:
        bad.write_bytes(content)
    argv = generate_overrides(trained, bad, f"hydra.run.dir={tmp_path / 'out'}")
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    with pytest.raises(SystemExit) as exit_info:
        generate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert message in line and str(bad) in line


def run_generate_expecting_error(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> str:
    """Run pippo-generate's entry point; assert exit 2 and one `error:` line, return it."""
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv, f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        generate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("frames/*"))
    return line


def test_a_checkpoint_of_another_stage_is_named_with_the_setting_to_change(
    trained: TinyRun, tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    argv = [*generate_overrides(trained, photo), "stage_class=pippo_lightning.stages.MidTrainStage"]
    line = run_generate_expecting_error(argv, tmp_path, monkeypatch, capsys)
    assert "was saved by pippo_lightning.stages.post_train.PostTrainStage" in line
    assert "not pippo_lightning.stages.mid_train.MidTrainStage" in line
    assert "stage_class=pippo_lightning.stages.post_train.PostTrainStage" in line


def test_a_pre_train_checkpoint_cannot_render_a_turnaround(tmp_path: Path):
    from pippo_lightning.compressors.identity import IdentityCompressor
    from pippo_lightning.inference.pipeline import CheckpointError, require_posed_views
    from pippo_lightning.models.image_encoders import ThumbnailEncoder
    from pippo_lightning.stages import PreTrainStage

    p1 = PreTrainStage(
        compressor=IdentityCompressor(space_to_depth=2),
        model_size="micro",
        image_size=16,
        num_views=1,
        image_encoder=ThumbnailEncoder(size=4),
    )
    with pytest.raises(CheckpointError, match="PreTrainStage checkpoint: it generates without"):
        require_posed_views(p1, tmp_path / "p1.ckpt")


def test_zero_views_is_one_error_line(
    trained: TinyRun, tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    line = run_generate_expecting_error(
        [*generate_overrides(trained, photo), "num_views=0"], tmp_path, monkeypatch, capsys
    )
    assert "num_views must be >= 1, got 0" in line
