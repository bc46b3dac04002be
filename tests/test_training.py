"""End-to-end: a tiny P3 run trains, checkpoints, logs offline to W&B, and reloads exactly."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import hydra
import torch

from pippo_lightning.cli.train import train
from pippo_lightning.stages import PostTrainStage
from tests.conftest import TINY_RUN
from tests.wandb_offline import read_offline_run


def test_tiny_run_trains_checkpoints_and_logs_offline(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(*TINY_RUN)
    result = train(cfg)
    run_dir = tmp_path / "run"

    assert result.trainer.global_step == 4
    for key in ("train/loss", "val/loss", "val/psnr", "val/psnr_copy_reference", "val/ssim"):
        assert math.isfinite(result.metrics[key]), key
    # per-view image metrics of the sampled validation views (ImageMetrics, one per view)
    num_views = cfg.num_views
    for name in ("psnr", "ssim"):
        per_view = [result.metrics[f"val/{name}_view{k}"] for k in range(num_views)]
        assert all(math.isfinite(v) for v in per_view), name
    assert f"val/ssim_view{num_views}" not in result.metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == [
        "val_step0000002.png",
        "val_step0000004.png",
    ]
    assert (run_dir / "summary.json").is_file()

    history = read_offline_run(run_dir)
    assert history.config["config"]["model"]["size"] == "micro"
    logged = set().union(*(row.keys() for row in history.rows))
    assert {
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "val/psnr",
        # Lightning's ThroughputMonitor (issue #17): subjects and views per second
        "train/device/samples_per_sec",
        "train/device/items_per_sec",
    } <= logged
    assert {"val/ssim", "val/ssim_view0", "val/psnr_view0"} <= logged

    # The checkpoint restores a stage whose predictions equal the trained one's exactly.
    stage = result.stage.eval()
    compressor = hydra.utils.instantiate(cfg.compressor)
    restored = PostTrainStage.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", compressor=compressor, map_location="cpu"
    ).eval()
    batch = next(iter(result.datamodule.val_dataloader()))
    latents = stage.to_latents(batch)
    t = torch.tensor([500])
    x_t = torch.randn_like(latents.x0)
    drops = stage.sample_condition_drops(latents.batch_size)
    drops = {k: torch.zeros_like(v) for k, v in drops.items()}
    with torch.no_grad():
        expected = stage.denoise(latents, x_t, t, drops)
        actual = restored.denoise(restored.to_latents(batch), x_t, t, drops)
    assert torch.equal(expected, actual)


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "pippo_lightning.cli.train", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_unknown_config_key_is_one_clear_error(tmp_path: Path) -> None:
    proc = run_cli("stage.optimizer.lrr=1", cwd=tmp_path)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_image_size_not_divisible_is_one_clear_error(tmp_path: Path) -> None:
    proc = run_cli("image_size=34", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "image_size=34" in line
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "data").exists()


def test_missing_vae_path_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vae"
    proc = run_cli("compressor=sdxl_vae", f"compressor.pretrained={missing}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert str(missing) in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_vae_hub_id_without_network_is_one_clear_error(tmp_path: Path) -> None:
    env_home = tmp_path / "hf"
    os.environ["HF_HOME"] = str(env_home)
    try:
        proc = run_cli("compressor=sdxl_vae", cwd=tmp_path)
    finally:
        os.environ.pop("HF_HOME")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "stabilityai/sdxl-vae" in line


def test_a_run_without_any_logger_trains_and_checkpoints(compose_config, tmp_path: Path) -> None:
    """logger=none: no experiment logger (the learning-rate monitor, which needs one, is
    dropped); the run still trains, validates and checkpoints."""
    cfg = compose_config(*TINY_RUN, "logger=none", "trainer.max_steps=2")
    result = train(cfg)
    assert result.trainer.global_step == 2 and not result.trainer.loggers
    assert math.isfinite(result.metrics["val/psnr"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "run").glob("wandb"))


def test_validation_scores_reprojection_error_of_the_sampled_views(
    compose_config, tmp_path: Path
) -> None:
    """stage.validation.reprojection=true: every validation scores the generated views and
    the ground truth of the same 24 dome cameras (nearest pairs) and logs both to W&B."""
    cfg = compose_config(
        *TINY_RUN,
        "image_size=64",
        "compressor.space_to_depth=8",
        "trainer.max_steps=2",
        "data.val_num_views=24",
        "stage.validation.reprojection=true",
        "stage.validation.reprojection_options.min_matches=4",
    )
    result = train(cfg)
    pairs = result.metrics["val/gt_reprojection_pairs"]
    assert pairs == 12 and result.metrics["val/reprojection_pairs"] == 12
    assert 0 <= result.metrics["val/gt_reprojection_error_pct"] < 5.0
    history = read_offline_run(tmp_path / "run")
    logged = set().union(*(row.keys() for row in history.rows))
    assert {"val/gt_reprojection_error_pct", "val/gt_reprojection_failed_pairs"} <= logged


def test_a_stage_trains_on_samples_without_a_reference_camera(
    compose_config, tmp_path: Path
) -> None:
    """.npy samples with no ref_cam_intrin/extrin and a ref_cam_pose that decodes to no camera
    (the original release's files are not known to carry one) train through the real
    DataModule: the nearest target camera stands in for the reference (P3 uses its rays)."""
    from pippo_lightning.data.npy_io import read_npy_sample, write_npy_sample
    from pippo_lightning.studio.synthetic import StudioConfig, generate_studio

    studio = StudioConfig(
        num_train_subjects=2, num_val_subjects=1, resolution=32, rings=((0.0, 4), (20.0, 4))
    )
    root = generate_studio(studio, tmp_path / "studio")
    files = sorted(root.glob("*/*.npy"))
    for path in files:
        sample = read_npy_sample(path)
        del sample["ref_cam_intrin"], sample["ref_cam_extrin"]
        sample["ref_cam_pose"] = sample["ref_cam_pose"] * 2.0  # a rotation scaled by 2
        write_npy_sample(path, sample)
    cfg = compose_config(
        *[o for o in TINY_RUN if not o.startswith("data.")],
        "data=folder",
        f"data.root={root}",
        "data.batch_size=2",
        "data.val_batch_size=1",
        "data.num_workers=0",
        "logger=none",
        "trainer.max_steps=2",
    )
    result = train(cfg)
    assert result.trainer.global_step == 2
    assert math.isfinite(result.metrics["train/loss"]) and math.isfinite(result.metrics["val/loss"])
    assert len(files) == 3
