"""pippo-eval on the tiny trained run (shared with test_generate.py), the ground-truth floor of
the studio at 256 px, and the turntable-video callback."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pippo_lightning.callbacks import media
from pippo_lightning.callbacks.media import TurntableVideoLogger, write_video
from pippo_lightning.cli.evaluate import evaluate
from pippo_lightning.cli.evaluate import main as evaluate_main
from tests.test_generate import TRAIN_SUBJECTS, TinyRun, error_lines, tiny_run
from tests.wandb_offline import OfflineRun, read_offline_run


def offline_run_with(path: Path, key: str, timeout_s: float = 20.0) -> OfflineRun:
    """The offline W&B run under ``path`` once its summary holds ``key`` (or keys under it):
    the W&B service writes the run file in its own process and may still be flushing it when
    ``finish()`` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_offline_run(path)
        if any(k.startswith(key) for k in run.summary) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return tiny_run(tmp_path_factory)


def eval_overrides(run: TinyRun, *extra: str) -> list[str]:
    """The tiny run's data config (same studio, reused) and 24 views: every dome camera, so the
    nearest pairs are close enough for SIFT to match even at 32 px."""
    return [
        f"ckpt={run.checkpoint}",
        f"paths.data_dir={run.data_dir}",
        f"data.synthetic.num_train_subjects={TRAIN_SUBJECTS}",  # the run's studio: reused
        "data.synthetic.num_val_subjects=1",
        "num_views=24",
        "sampling.num_steps=2",
        "sampling.attention_gamma=1.5",
        "logger.wandb.mode=offline",
        *extra,
    ]


# ------------------------------------------------------------------------------ pippo-eval


def test_eval_entry_point_writes_report_and_logs_to_wandb(
    trained: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    """`pippo-eval` end to end, in-process: generated and ground-truth reprojection error from
    the same pass, PSNR, SSIM; report.json, report.md and an offline W&B run."""
    out = tmp_path / "eval"
    monkeypatch.setattr(
        sys, "argv", ["pippo-eval", *eval_overrides(trained, f"hydra.run.dir={out}")]
    )
    start = time.perf_counter()
    evaluate_main()
    seconds = time.perf_counter() - start
    capsys.readouterr()

    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    print(
        f"\npippo-eval (2-step checkpoint, 1 val subject x 24 views @ 32 px, 2 DDIM steps): "
        f"reprojection error generated {m['reprojection_error_pct']} % "
        f"({m['reprojection_failed_pairs']}/{m['reprojection_pairs']} pairs failed), "
        f"ground truth {m['gt_reprojection_error_pct']:.2f} % "
        f"({m['gt_reprojection_failed_pairs']}/{m['gt_reprojection_pairs']} failed); "
        f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}; LPIPS: {report['skipped'].get('lpips')}; "
        f"{seconds:.1f} s"
    )
    assert report["global_step"] == 2 and report["data"]["views_per_subject"] == 24
    assert report["data"]["split"] == "val" and report["data"]["subjects"] == 1
    assert m["reprojection_pairs"] == m["gt_reprojection_pairs"] == 12  # nearest pairs of 24
    # The ground truth matches (a measured floor); a 2-step model's noise may match nothing,
    # which the report says as null / n/a rather than a made-up number.
    assert m["gt_reprojection_error_pct"] is not None and 0 <= m["gt_reprojection_error_pct"] < 20
    assert m["reprojection_error_pct"] is None or m["reprojection_error_pct"] >= 0
    assert math.isfinite(m["psnr"]) and -1.0 <= m["ssim"] <= 1.0
    assert len(report["per_view"]["psnr"]) == 24 and len(report["per_subject"]) == 1
    assert "lpips" in m or "lpips" in report["skipped"]
    markdown = (out / "report.md").read_text()
    assert "reprojection error, % of max(H, W)" in markdown and "PSNR" in markdown
    assert (out / "samples" / "batch_0000.png").is_file()
    # issue #17: RE against azimuth, PSNR against view index, report.html beside the numbers
    assert len(report["per_view"]["azimuth_deg"]) == 24
    assert len(report["per_view"]["gt_reprojection_error_pct"]) == 24
    assert (out / "plots" / "re_vs_azimuth.png").is_file()
    assert (out / "plots" / "psnr_vs_view.png").is_file()
    page = (out / "report.html").read_text()
    assert 'src="plots/re_vs_azimuth.png"' in page and 'src="samples/batch_0000.png"' in page

    run = offline_run_with(out, "eval/psnr")
    assert run.summary["eval/psnr"] == pytest.approx(m["psnr"])
    assert run.summary["eval/gt_reprojection_error_pct"] == pytest.approx(
        m["gt_reprojection_error_pct"]
    )
    logged = set().union(*(row.keys() for row in run.rows))
    assert {"eval/psnr", "eval/ssim", "eval/per_subject/_type", "eval/samples/_type"} <= logged
    charts = {"eval/re_vs_azimuth_table", "eval/psnr_vs_view_table", "eval/plots/psnr_vs_view"}
    assert {f"{key}/_type" for key in charts} <= logged, sorted(logged)
    # issue #17: written into the training run (resumed by the id its checkpoint recorded),
    # whose own config is kept; the evaluation's goes beside it
    training = read_offline_run(trained.run_dir)
    assert run.run_id == training.run_id
    assert "eval_config" in run.config and "config" not in run.config


def test_eval_links_to_the_training_run_as_configured(trained: TinyRun):
    from omegaconf import OmegaConf

    from pippo_lightning.callbacks.tracking import link_eval_to_training_run

    training_id = read_offline_run(trained.run_dir).run_id
    logger = {"wandb": {"name": "eval_val", "group": "g", "job_type": "eval", "tags": ["eval"]}}
    for link, expected in (("resume", training_id), ("lineage", training_id), ("none", None)):
        cfg = OmegaConf.create({"wandb_link": link, "logger": logger})
        assert link_eval_to_training_run(cfg, trained.checkpoint) == expected
        wandb_cfg = cfg.logger.wandb
        if link == "resume":  # nothing that would rename, regroup or retag the training run
            assert wandb_cfg.run_id == training_id and wandb_cfg.resume == "allow"
            assert wandb_cfg.name is wandb_cfg.group is wandb_cfg.tags is None
        else:
            assert "run_id" not in wandb_cfg and wandb_cfg.name == "eval_val"


def test_eval_missing_checkpoint_is_one_error_line(
    trained: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    missing = tmp_path / "missing.ckpt"
    argv = eval_overrides(trained, f"ckpt={missing}", f"hydra.run.dir={tmp_path / 'eval'}")
    monkeypatch.setattr(sys, "argv", ["pippo-eval", *argv])
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert str(missing) in line


def test_eval_without_checkpoint_says_how_to_pass_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setattr(sys, "argv", ["pippo-eval", f"hydra.run.dir={tmp_path / 'eval'}"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "ckpt=" in line


@pytest.mark.slow
def test_ground_truth_reprojection_floor_of_the_studio_at_256px(compose_config, tmp_path: Path):
    """The studio's validation subjects at 256 px, all 24 dome views (nearest pairs), scored
    by `pippo-eval gt_only=true`: the floor a perfect model would reach with SIFT matching."""
    cfg = compose_config(
        "gt_only=true",
        "image_size=256",
        "num_views=24",
        "data.synthetic.num_train_subjects=0",
        "data.synthetic.num_val_subjects=2",
        "logger=none",
        config_name="evaluate",
    )
    report = evaluate(cfg).report
    m = report["metrics"]
    print(
        f"\nGT reprojection error, studio val (2 subjects x 24 views @ 256 px, SIFT, nearest "
        f"pairs): {m['gt_reprojection_error_pct']:.2f} % = {m['gt_reprojection_error_px']:.2f} px "
        f"({m['gt_reprojection_failed_pairs']}/{m['gt_reprojection_pairs']} pairs failed)"
    )
    assert m["gt_reprojection_error_pct"] < 1.0


# ------------------------------------------------------------------------ turntable videos


def test_validation_logs_a_turntable_video_to_wandb(trained: TinyRun):
    """The tiny run trained with the callback: a video file per validation, logged to W&B."""
    videos = sorted((trained.run_dir / "videos").glob("val_step*_sample0.*"))
    assert [v.stem for v in videos] == ["val_step0000002_sample0"]
    assert videos[0].suffix in (".mp4", ".gif")
    run = offline_run_with(trained.run_dir, "val/turntable")
    logged = [row for row in run.rows if "val/turntable/_type" in row]
    assert logged, "no turntable video in the W&B run"
    (entry,) = logged[0]["val/turntable/videos"]
    assert entry["_type"] == "video-file" and Path(entry["path"]).suffix == videos[0].suffix
    print(f"\nturntable video: {videos[0].name}, in W&B as {entry['path']}")


def test_video_writer_falls_back_to_gif_and_says_why(tmp_path: Path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(media, "_mp4_plugin", lambda: None)
    video = write_video(tmp_path / "clip", frames, fps=5)
    assert video.format == "gif" and video.path.suffix == ".gif"
    assert "imageio-ffmpeg" in video.fallback_reason
    import imageio.v3 as iio

    assert iio.imread(video.path, index=None).shape == (6, 32, 32, 3)
    assert iio.immeta(video.path)["duration"] == 200  # 5 fps, in ms per frame


def _fake_trainer() -> SimpleNamespace:
    """What the callback reads of a Trainer: rank, sanity check, step, loggers."""
    return SimpleNamespace(is_global_zero=True, sanity_checking=False, global_step=7, loggers=[])


def _feed(callback: TurntableVideoLogger, trainer: SimpleNamespace) -> None:
    callback.on_validation_epoch_start(trainer, None)
    generated = torch.rand(2, 4, 3, 16, 16) * 2 - 1  # [B, NV, 3, H, W]
    callback.on_validation_batch_end(trainer, None, {"generated": generated}, None, 0)
    callback.on_validation_epoch_end(trainer, None)


def test_video_callback_failures_are_warnings_not_crashes(tmp_path: Path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(media, "write_video", broken)
    callback = TurntableVideoLogger(tmp_path / "videos", max_samples=2)
    with caplog.at_level(logging.WARNING):
        _feed(callback, _fake_trainer())
        assert callback.flush()
    assert "disk full" in caplog.text and callback.last_videos == []


def test_video_encoding_never_blocks_the_training_loop(tmp_path: Path, monkeypatch, caplog):
    release = threading.Event()
    monkeypatch.setattr(media, "write_video", lambda *a, **k: release.wait(10))
    callback = TurntableVideoLogger(tmp_path / "videos", timeout_s=0.2)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        _feed(callback, _fake_trainer())  # validation ends while the encoder is still busy
        assert time.perf_counter() - start < 0.15 < callback.timeout_s
        _feed(callback, _fake_trainer())  # the next validation does not queue behind it
        assert "still encoding" in caplog.text
        assert time.perf_counter() - start < 0.15
        assert not callback.flush()  # the end of fit gives up on a hung encoder after timeout_s
    assert "skipped" in caplog.text
    release.set()


def test_video_callback_writes_one_clip_per_sample_on_rank_zero_only(tmp_path: Path):
    callback = TurntableVideoLogger(tmp_path / "videos", max_samples=2, format="gif")
    _feed(callback, _fake_trainer())
    assert callback.flush()
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "val_step0000007_sample0.gif",
        "val_step0000007_sample1.gif",
    ]
    other_rank = TurntableVideoLogger(tmp_path / "rank1", format="gif")
    trainer = _fake_trainer()
    trainer.is_global_zero = False
    _feed(other_rank, trainer)
    assert other_rank.flush()
    assert not (tmp_path / "rank1").exists()
