"""Malformed configs are refused before any work starts (issue #7, pippo_lightning.stages.preflight).

Every case runs `pippo-train`'s `main` with command-line overrides in a fresh working directory
and checks the convention: exit code 2, one `error:` line naming the key, the value and what was
expected, and nothing written but Hydra's run directory (`.hydra/` and `train.log`) — no data
generated, no checkpoint. One case runs the real process to pin the exit code end to end.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pippo_lightning.cli.common import CONFIG_DIR
from pippo_lightning.cli.train import main
from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.data.convert import npy_to_shards
from pippo_lightning.stages import MidTrainStage, PostTrainStage, preflight
from pippo_lightning.stages.config import ConfigError
from pippo_lightning.stages.dry_build import check_model, latent_geometry
from pippo_lightning.stages.preflight import check_hardware, check_settings, validate_run_config
from pippo_lightning.studio.synthetic import StudioConfig, generate_studio
from tests.conftest import TINY_RUN

#: what Hydra itself leaves in a run directory before the task starts (the convention)
HYDRA_RUN_FILES = {".hydra", "train.log"}
#: TINY_RUN's model geometry, for init checkpoints: 32 px folded 4x4 -> 48 x 8 x 8 latents
TINY_GEOMETRY = ("image_size=32", "num_views=2", "compressor.space_to_depth=4")


def run_main(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[str]]:
    """`pippo-train ARGS` in-process in `workdir`: (exit code, its `error:` lines)."""
    workdir.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", ["pippo-train", "logger=csv", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return exit_info.value.code, errors


def assert_nothing_started(workdir: Path) -> None:
    """No data generated, no checkpoint, no run output beyond Hydra's own files."""
    assert not (workdir / "data").exists()
    assert not list(workdir.rglob("*.ckpt"))
    (run_dir,) = (workdir / "outputs" / "train" / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} <= HYDRA_RUN_FILES


def assert_refused(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: tuple[str, ...],
) -> str:
    code, errors = run_main(workdir, monkeypatch, capsys, *args)
    assert code == 2, errors
    (line,) = errors
    for part in expected:
        assert part in line, (part, line)
    assert_nothing_started(workdir)
    return line


# ----------------------------------------------------------------------------- (d) settings
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("stage.optimizer.lr=-1", ("stage.optimizer.lr", "-1", "> 0")),
        ("stage.optimizer.lr=nan", ("stage.optimizer.lr", "nan", "finite")),
        ("stage.optimizer.lr=abc", ("stage.optimizer.lr='abc'", "expected a number")),
        ("stage.optimizer.eps=0", ("stage.optimizer.eps", "> 0")),
        ("stage.optimizer.weight_decay=-0.1", ("stage.optimizer.weight_decay", ">= 0")),
        (
            "stage.optimizer.betas=[0.9]",
            ("stage.optimizer.betas=[0.9]", "expected a list of 2 values, got a list of 1"),
        ),
        ("stage.optimizer.warmup_steps=-5", ("stage.optimizer.warmup_steps", ">= 0")),
        ("stage.condition_dropout.ref=1.5", ("stage.condition_dropout.ref", "1.5", "[0, 1]")),
        ("stage.condition_dropout.all=-0.1", ("stage.condition_dropout.all", "[0, 1]")),
        ("stage.ema.decay=1.0", ("stage.ema.decay", "[0, 1)")),
        ("stage.ema.enabled=maybe", ("stage.ema.enabled='maybe'", "expected a boolean")),
        ("stage.sampling.eta=-1", ("stage.sampling", "eta=-1", ">= 0")),
        ("stage.sampling.num_steps=1000", ("stage.sampling.num_steps=1000", "1 .. 999")),
        (
            "stage.validation.loss_timesteps=[100,1000]",
            ("stage.validation.loss_timesteps", "[1000]", "[0, 999]"),
        ),
        ("stage.schedule.kind=foo", ("stage.schedule", "kind='foo'", "expected one of")),
        ("stage.noise_offset=-1", ("stage.noise_offset=-1", ">= 0")),
        ("data.batch_size=0", ("data.batch_size=0", ">= 1")),
        ("trainer.max_steps=0", ("trainer.max_steps=0", ">= 1")),
    ],
)
def test_bad_setting_is_refused_before_any_work(
    tmp_path: Path, monkeypatch, capsys, override: str, expected: tuple[str, ...]
) -> None:
    assert_refused(tmp_path, monkeypatch, capsys, (override,), expected)


def test_warmup_longer_than_the_run_is_a_warning_not_an_error(
    compose_config, caplog: pytest.LogCaptureFixture
) -> None:
    # a smoke run (`make train trainer.max_steps=100`) keeps the recipe's warm-up on purpose
    cfg = compose_config(*TINY_RUN, "trainer.max_steps=3", "stage.optimizer.warmup_steps=10")
    with caplog.at_level(logging.WARNING, logger="pippo_lightning.stages.preflight"):
        validate_run_config(cfg)
    assert "warmup_steps=10 > trainer.max_steps=3" in caplog.text


# ----------------------------------------------------------------------------- (b) patch grid
@pytest.mark.parametrize(
    ("image_size", "expected"),
    [
        # the demo folds 2x2 pixels into channels: 33 px cannot be folded
        ("33", ("image_size=33", "downsample factor 2")),
        # 34 px -> 17 x 17 latents: no grid of 2 x 2 patches
        ("34", ("image_size=34", "latent_size=17", "patch_size=2")),
    ],
)
def test_resolution_off_the_patch_grid_is_refused_before_any_work(
    tmp_path: Path, monkeypatch, capsys, image_size: str, expected: tuple[str, ...]
) -> None:
    assert_refused(tmp_path, monkeypatch, capsys, (f"image_size={image_size}",), expected)


def test_full_model_patch_grid_is_checked_without_building_it(compose_config) -> None:
    """The dry build runs on the meta device: refusing a 1.5 B-parameter model costs nothing."""
    from pippo_lightning.stages.config import ConfigError

    cfg = compose_config("model=full", "image_size=68", "compressor.space_to_depth=4")
    with pytest.raises(ConfigError, match="latent_size=17"):
        validate_run_config(cfg)


# ----------------------------------------------------------------------------- hardware
def machine_with_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make the preflight see `count` GPUs, whatever this machine has."""
    monkeypatch.setattr(preflight, "count_gpus", lambda accelerator="cuda": count)


@pytest.mark.parametrize(
    ("preset", "needed"),
    [("gpu_16gb", "1 CUDA GPU "), ("gpu_80gb", "1 CUDA GPU "), ("gpu_8x_ddp", "8 CUDA GPUs")],
)
def test_gpu_preset_on_a_cpu_machine_is_refused_before_any_work(
    tmp_path: Path, monkeypatch, capsys, preset: str, needed: str
) -> None:
    machine_with_gpus(monkeypatch, 0)
    line = assert_refused(
        tmp_path,
        monkeypatch,
        capsys,
        (f"hardware={preset}",),
        (
            f"hardware={preset} needs {needed}",
            "trainer.accelerator=gpu",
            "this machine has no CUDA",
        ),
    )
    assert line.endswith("use hardware=cpu (or trainer.accelerator=cpu)"), line
    assert "No supported gpu backend" not in line


def test_more_gpus_than_the_machine_has_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    machine_with_gpus(monkeypatch, 1)
    assert_refused(
        tmp_path,
        monkeypatch,
        capsys,
        ("hardware=gpu_8x_ddp",),
        (
            "hardware=gpu_8x_ddp needs 8 CUDA GPUs per node",
            "trainer.devices=8",
            "this machine has 1 GPU:",
            "use trainer.devices=1 (or fewer), or hardware=cpu",
        ),
    )


@pytest.mark.parametrize(
    ("devices", "available", "refused"),
    [(2, 2, False), (2, 1, True), ("auto", 1, False), ("auto", 0, True), ([1], 1, True)],
)
def test_device_count_is_checked_against_the_gpus_there_are(
    compose_config, devices: object, available: int, refused: bool
) -> None:
    cfg = compose_config("trainer.accelerator=gpu", f"trainer.devices={devices}")
    if refused:
        with pytest.raises(ConfigError, match=f"this machine has {available or 'no'}"):
            check_hardware(cfg, gpus_available=available)
    else:
        check_hardware(cfg, gpus_available=available)
    check_hardware(compose_config("trainer.devices=4"), gpus_available=0)  # CPU processes


# ----------------------------------------------------------------------------- (a) views
def test_more_views_than_the_studio_films_is_refused_before_rendering(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    line = assert_refused(
        tmp_path,
        monkeypatch,
        capsys,
        ("num_views=4", "data.synthetic.rings=[[0.0,3]]"),
        ("data.num_views=4", "3 cameras", "data.synthetic.rings=[[0.0, 3]]", "<= 3"),
    )
    assert "data.num_views" in line


def test_more_validation_views_than_the_studio_films_is_refused(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    assert_refused(
        tmp_path,
        monkeypatch,
        capsys,
        ("data.val_num_views=25",),
        ("data.val_num_views=25", "24 cameras", "<= 24"),
    )


@pytest.fixture(scope="module")
def three_view_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared dataset whose samples have 3 views, as .npy files and as shards."""
    root = tmp_path_factory.mktemp("three_views")
    studio = StudioConfig(
        num_train_subjects=1, num_val_subjects=1, resolution=16, rings=((0.0, 3),), seed=5
    )
    npy = generate_studio(studio, root / "npy")
    return {"npy": npy, "shards": npy_to_shards(npy, root / "shards")}


@pytest.mark.parametrize("layout", ["npy", "shards"])
def test_more_views_than_a_dataset_sample_has_is_refused_before_loading(
    tmp_path: Path, monkeypatch, capsys, three_view_dataset: dict[str, Path], layout: str
) -> None:
    root = three_view_dataset[layout]
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert_refused(
        tmp_path,
        monkeypatch,
        capsys,
        ("data=folder", f"data.root={root}", "num_views=4", "data.num_workers=0"),
        ("data.num_views=4", str(root / "train"), "have 3 views", "<= 3"),
    )
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no cache written


def test_dataset_root_not_set_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    assert_refused(tmp_path, monkeypatch, capsys, ("data=folder",), ("data.root is not set",))


def test_views_check_in_a_real_process_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pippo_lightning.cli.train", "logger=csv", "num_views=25"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "data.num_views=25" in line and "24 cameras" in line
    assert_nothing_started(tmp_path)


# ----------------------------------------------------------------------------- (c) init_from
def save_stage(stage: torch.nn.Module, path: Path) -> Path:
    torch.save({"state_dict": stage.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def init_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stage checkpoints at TINY_RUN's geometry: fitting ones and ones that do not fit."""
    root = tmp_path_factory.mktemp("init")
    compressor = IdentityCompressor(space_to_depth=4)

    def stage(cls: type, **overrides: int) -> torch.nn.Module:
        return cls(compressor=compressor, image_size=32, num_views=2, model_overrides=overrides)

    truncated = save_stage(stage(MidTrainStage), root / "truncated.ckpt")
    truncated.write_bytes(truncated.read_bytes()[:4096])
    return {
        "m2": save_stage(stage(MidTrainStage), root / "m2.ckpt"),
        "p3": save_stage(stage(PostTrainStage), root / "p3.ckpt"),
        # one DiT block instead of two: the stage would start half random
        "m2_depth1": save_stage(stage(MidTrainStage, depth=1), root / "m2_depth1.ckpt"),
        # another width: every shared layer mismatches
        "m2_dim64": save_stage(stage(MidTrainStage, dim=64), root / "m2_dim64.ckpt"),
        "truncated": truncated,
    }


@pytest.mark.parametrize(
    ("checkpoint", "stage", "expected"),
    [
        ("m2_depth1", "p3", ("missing from the checkpoint (14)", "generator.blocks.1.")),
        ("m2_dim64", "p3", ("shape mismatches", "checkpoint (64,) vs stage (96,)")),
        ("p3", "m2", ("weights the stage lacks", "control_mlp.")),
        ("truncated", "p3", ("not a loadable checkpoint",)),
        ("no-such", "p3", ("no such checkpoint file",)),
    ],
)
def test_init_checkpoint_that_does_not_fit_is_refused_at_startup(
    tmp_path: Path,
    monkeypatch,
    capsys,
    init_checkpoints: dict[str, Path],
    checkpoint: str,
    stage: str,
    expected: tuple[str, ...],
) -> None:
    path = init_checkpoints.get(checkpoint, tmp_path / "no-such.ckpt")
    args = (*TINY_GEOMETRY, f"stage={stage}", f"stage.init_from={path}")
    assert_refused(
        tmp_path / "work", monkeypatch, capsys, args, (f"stage.init_from={path}", *expected)
    )


def test_init_from_the_previous_stage_passes_the_check(
    compose_config, init_checkpoints: dict[str, Path]
) -> None:
    # P3 from M2 lacks the ControlMLP on purpose: it starts at zero output (the stage chain)
    validate_run_config(compose_config(*TINY_RUN, f"stage.init_from={init_checkpoints['m2']}"))
    validate_run_config(compose_config(*TINY_RUN, f"stage.init_from={init_checkpoints['p3']}"))


def test_valid_default_config_passes(compose_config) -> None:
    validate_run_config(compose_config())
    validate_run_config(compose_config("stage=p1"))
    validate_run_config(compose_config("stage=m2"))


# ----------------------------------------------------------------------------- no false alarms
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONFIG_DIR / "hardware").glob("*.yaml"))


@pytest.mark.parametrize(
    "preset", [f"experiment={e}" for e in EXPERIMENTS] + [f"hardware={h}" for h in HARDWARE]
)
def test_every_shipped_recipe_passes_the_settings_and_model_checks(
    compose_config, tmp_path: Path, preset: str
) -> None:
    """The paper recipes too: their full-size models are dry-built at 512 / 1024 px on the meta
    device, with an SDXL-shaped VAE config standing in for the weights (geometry only)."""
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(
        json.dumps({"block_out_channels": [128, 256, 512, 512], "latent_channels": 4})
    )
    cfg = compose_config(preset, "stage.init_from=null")
    if cfg.compressor._target_.endswith("SDXLVAECompressor"):
        cfg = compose_config(preset, "stage.init_from=null", f"compressor.pretrained={vae}")
    assert latent_geometry(cfg.compressor) is not None  # the model check really runs
    check_settings(cfg)
    check_hardware(cfg, gpus_available=8)  # a GPU preset passes where its GPUs are
    check_model(cfg)
