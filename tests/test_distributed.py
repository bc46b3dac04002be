"""Multi-process training on CPU (gloo): DDP and FSDP2 through the CLI, alone and in a multirun.

The end-to-end tests start `python -m pippo_lightning.cli.train` with two CPU ranks, as a user
would, and check what a run leaves behind: one directory, one W&B run, one set of checkpoints,
and metrics reduced over the ranks to exactly what one process computes on the same data.
Each CLI run takes ~15 s on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from pippo_lightning.checkpoints.files import checkpoint_problem
from pippo_lightning.cli.common import CONFIG_DIR, ddp_child_command
from pippo_lightning.stages import STAGES, PippoStage, PostTrainStage
from pippo_lightning.stages.config import ConfigError
from pippo_lightning.stages.sharding import (
    ShardingConfig,
    configure_sharding,
    consolidate_checkpoint,
    is_sharded,
)
from tests.conftest import REPO_ROOT, TINY_RUN
from tests.wandb_offline import OfflineRun, read_offline_run


def with_overrides(base: Sequence[str], changes: Mapping[str, str]) -> list[str]:
    """`base` overrides with some values replaced (Hydra rejects a key given twice)."""
    keys = [item.split("=", 1)[0] for item in base]
    missing = sorted(set(changes) - set(keys))
    assert not missing, f"not in the base overrides: {missing}"
    return [f"{k}={changes[k]}" if k in changes else item for k, item in zip(keys, base)]


#: Two validation subjects and a validation batch of one: each rank validates one subject, so
#: the logged val metrics are the mean over ranks of single-sample values. Every validation
#: batch is sampled, so val/psnr covers the same subjects in one process as over two ranks.
OVERRIDES = with_overrides(
    TINY_RUN,
    {"data.synthetic.num_val_subjects": "2", "stage.validation.sample_batches": "2"},
)
#: fp32 (not `precision: auto`, bf16 on CPUs with avx512_bf16): these runs are compared with one
#: process and with each other number for number, and bf16 rounding differs with reduction order
TWO_CPU_RANKS = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
#: the full-model preset, on CPU ranks, in fp32 so it can be compared with DDP number for number
FSDP_FP32 = ["hardware=gpu_fsdp", *TWO_CPU_RANKS, "stage.sharding.param_dtype=null"]


# --------------------------------------------------------------------------- running the CLI
def cli_env() -> dict[str, str]:
    """Offline, single-threaded ranks (two of them share two cores)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m pippo_lightning.cli.train ARGS` in `cwd`; fails the test with the stderr tail."""
    proc = subprocess.run(
        [sys.executable, "-m", "pippo_lightning.cli.train", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"pippo-train {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return proc


def last_row_with(history: OfflineRun, key: str) -> dict[str, Any]:
    return [row for row in history.rows if key in row][-1]


def logged_steps(history: OfflineRun, key: str) -> list[int]:
    return [row["trainer/global_step"] for row in history.rows if key in row]


def offline_runs(root: Path) -> list[Path]:
    return sorted(root.rglob("offline-run-*"))


@dataclass
class Run:
    """One finished CLI run: its output directory and W&B history."""

    root: Path  # the working directory it ran in (paths.root_dir)
    dir: Path  # its output directory
    history: OfflineRun


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic studio for every run of the module (runs with equal data share it)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Run:
    """The tiny P3 run on two CPU ranks under DDP, in a fresh working directory."""
    root = tmp_path_factory.mktemp("ddp")
    run_train(
        *OVERRIDES,
        *TWO_CPU_RANKS,
        "trainer.strategy=ddp",
        f"paths.root_dir={root}",
        f"paths.data_dir={data_dir}",
        cwd=root,
    )
    (run_dir,) = (root / "outputs" / "train" / "runs").iterdir()
    return Run(root=root, dir=run_dir, history=read_offline_run(run_dir))


# --------------------------------------------------------------------------- DDP
def validate_in_one_process(cfg: DictConfig, checkpoint: Path) -> dict[str, float]:
    """Validate a checkpoint's weights on one CPU process: the reference for reduced metrics."""
    datamodule = hydra.utils.instantiate(cfg.data)
    compressor = hydra.utils.instantiate(cfg.compressor)
    # the sampler is chosen by config, not saved with the weights: validate with the run's own
    stage = PostTrainStage.load_from_checkpoint(
        checkpoint,
        compressor=compressor,
        sampler=hydra.utils.instantiate(cfg.sampler),
        map_location="cpu",
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(stage, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in metrics.items()}


def test_ddp_on_two_cpu_ranks_makes_one_run_with_metrics_reduced_over_ranks(
    ddp_run: Run, compose_config, data_dir: Path
) -> None:
    run = ddp_run.dir
    # one output directory; rank 1 wrote its log into it and started no run of its own
    assert [p.parent for p in (ddp_run.root / "outputs").glob("*/*/*")] == [run.parent]
    assert (run / "train_rank1.log").is_file()
    assert offline_runs(ddp_run.root) == sorted(run.glob("wandb/offline-run-*"))
    assert len(offline_runs(ddp_run.root)) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step0000002.ckpt",
        "step0000004.ckpt",
    ]
    assert logged_steps(ddp_run.history, "train/loss") == [0, 1, 2, 3]
    assert len(logged_steps(ddp_run.history, "val/loss")) == 2

    # The last validation (step 4, both subjects, one per rank) logged the mean over ranks;
    # one process validating the same weights over the same subjects must log the same.
    logged = last_row_with(ddp_run.history, "val/loss")
    single = validate_in_one_process(
        compose_config(*OVERRIDES, data_dir=data_dir), run / "checkpoints" / "last.ckpt"
    )
    for key in ("val/loss", "val/psnr", "val/psnr_copy_reference", "val/ssim", "val/ssim_view0"):
        assert single[key] == pytest.approx(logged[key], rel=1e-5, abs=1e-6), key


# --------------------------------------------------------------------------- multirun + DDP
def write_experiment(config_dir: Path, name: str, overrides: Sequence[str]) -> None:
    """An experiment file holding `overrides` on top of the demo recipe.

    A sweep's job directories are named after its command-line overrides; the tiny-run
    overrides would make names longer than a file name may be, so they go in a file.
    """
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist(list(overrides)))
    path = config_dir / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package _global_\ndefaults:\n  - demo_cpu\n  - _self_\n\n{body}")


def test_multirun_of_ddp_jobs_gives_each_job_its_own_dir_checkpoints_and_wandb_run(
    tmp_path: Path, data_dir: Path
) -> None:
    write_experiment(
        tmp_path / "configs",
        "tiny_ddp",
        [*OVERRIDES, f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}"],
    )
    run_train(
        "-m",
        "--config-dir",
        str(tmp_path / "configs"),
        "experiment=tiny_ddp",
        *TWO_CPU_RANKS,
        "trainer.strategy=ddp",
        "stage.optimizer.lr=1e-3,2e-3",
        cwd=tmp_path,
    )
    outputs = tmp_path / "outputs" / "train"
    # no rank started a sweep or a single run of its own
    assert [p.name for p in outputs.iterdir()] == ["multiruns"]
    (sweep,) = outputs.joinpath("multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    assert len(offline_runs(tmp_path)) == 2  # no third run anywhere

    for job, lr in zip(jobs, (1e-3, 2e-3), strict=True):
        assert f"stage.optimizer.lr={lr}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "train_rank1.log").is_file()  # rank 1 ran in its job's directory
        assert len(list(job.glob("wandb/offline-run-*"))) == 1
        history = read_offline_run(job)
        assert history.config["config"]["stage"]["optimizer"]["lr"] == lr
        assert logged_steps(history, "train/loss") == [0, 1, 2, 3]


def test_ddp_child_command_reads_back_a_multirun_job_dir(tmp_path: Path) -> None:
    """Job directories are named `<n>_<key=value,...>`; the child's override must survive it."""
    job_dir = tmp_path / "multiruns" / "0_a=1,b='x y'" / "c\\d"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text("{}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = ddp_child_command(local_rank=1)
    finally:
        GlobalHydra.instance().clear()
    overrides = OverridesParser.create().parse_overrides(command[-3:])
    values = {o.key_or_group: o.value() for o in overrides}
    assert values["hydra.run.dir"] == str(job_dir)
    assert values["hydra.job.name"] == "train_rank1"
    assert command[command.index("--config-path") + 1] == str(job_dir / ".hydra")
    assert cwd == str(tmp_path)


# --------------------------------------------------------------------------- FSDP2
def test_fsdp2_on_two_cpu_ranks_matches_ddp_and_resumes_from_its_sharded_checkpoint(
    ddp_run: Run, tmp_path: Path, data_dir: Path
) -> None:
    common = [*OVERRIDES, f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    run = tmp_path / "run"
    run_train(*common, *FSDP_FP32, f"hydra.run.dir={run}", cwd=tmp_path)

    # sharded checkpoints: directories with one shard file per rank, EMA and optimizer inside,
    # each written whole under a temporary name and renamed (none left behind)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step0000002.ckpt",
        "step0000004.ckpt",
    ]
    checkpoint = run / "checkpoints" / "last.ckpt"
    files = sorted(p.name for p in checkpoint.iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert checkpoint_problem(checkpoint) is None
    saved = consolidate_checkpoint(checkpoint, tmp_path / "first.ckpt")
    state = torch.load(saved, map_location="cpu", weights_only=True)["state_dict"]
    model_keys = {k.removeprefix("model.") for k in state if k.startswith("model.")}
    ema_keys = {k.removeprefix("ema.shadow.") for k in state if k.startswith("ema.shadow.")}
    assert model_keys and model_keys == ema_keys
    assert int(state["ema.num_updates"]) > 0

    # fp32 FSDP2 (bf16 off) with activation checkpointing computes what DDP computes: same
    # gradient norms, and the same validation of the EMA — each rank averaged its own shard
    history = read_offline_run(run)
    for key in ("train/grad_norm", "val/loss", "val/psnr"):
        expected = [row[key] for row in ddp_run.history.rows if key in row]
        actual = [row[key] for row in history.rows if key in row]
        assert actual == pytest.approx(expected, rel=1e-5), key

    # the same launch again in the same run directory, with the preset's bf16 policy and two
    # steps more: auto_resume finds the sharded checkpoint (no ckpt_path) and continues it
    run_train(
        *common,
        "hardware=gpu_fsdp",
        *TWO_CPU_RANKS,
        "trainer.max_steps=6",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    history = read_offline_run(run)  # the newest offline run: the resumed one
    assert logged_steps(history, "train/loss") == [4, 5]  # continued, not restarted
    after = consolidate_checkpoint(checkpoint, tmp_path / "after.ckpt")
    resumed_state = torch.load(after, map_location="cpu", weights_only=True)
    assert resumed_state["global_step"] == 6
    # the EMA came back from the checkpoint and went on averaging (a fresh copy would restart)
    assert int(resumed_state["state_dict"]["ema.num_updates"]) > int(state["ema.num_updates"])

    # the consolidated file is an ordinary checkpoint: it loads into a one-process stage
    compressor = hydra.utils.instantiate(OmegaConf.load(run / ".hydra" / "config.yaml").compressor)
    stage = PostTrainStage.load_from_checkpoint(after, compressor=compressor, map_location="cpu")
    shadow = dict(stage.ema.shadow.named_parameters())
    for name, value in shadow.items():
        assert torch.equal(value, resumed_state["state_dict"][f"ema.shadow.{name}"]), name
    assert not all(torch.equal(p, shadow[n]) for n, p in stage.model.named_parameters())


# --------------------------------------------------------------------------- sharding, in-process
def tiny_stage(stage: str = "p3", **stage_kwargs: Any) -> PippoStage:
    """A micro stage on 8 px images (P1: one view and the weight-free thumbnail encoder)."""
    from pippo_lightning.compressors.identity import IdentityCompressor
    from pippo_lightning.models.image_encoders import ThumbnailEncoder

    if stage == "p1":
        stage_kwargs.update(num_views=1, image_encoder=ThumbnailEncoder(size=2))
    stage_kwargs.setdefault("num_views", 2)
    return STAGES[stage](
        compressor=IdentityCompressor(), model_size="micro", image_size=8, **stage_kwargs
    )


def test_sharding_settings_are_checked_even_without_a_mesh() -> None:
    with pytest.raises(ConfigError, match="param_dtype"):
        ShardingConfig(param_dtype="fp8")
    stage = tiny_stage(sharding={"param_dtyp": "bfloat16"})
    with pytest.raises(ConfigError, match="param_dtyp"):
        configure_sharding(stage)


def test_configure_sharding_does_nothing_without_a_device_mesh() -> None:
    stage = tiny_stage()
    assert configure_sharding(stage) is False
    assert not any(is_sharded(m) for m in stage.modules())


@pytest.fixture
def one_rank_process_group(tmp_path: Path):
    """A gloo process group of one rank in this process, so FSDP2 runs without launching."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("stage_name", ["p1", "m2", "p3"])
def test_sharding_twice_changes_nothing_and_the_ema_averages_sharded_weights(
    one_rank_process_group: None, stage_name: str
) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    stage = tiny_stage(stage_name, ema={"decay": 0.5, "warmup": False})
    stage._device_mesh = init_device_mesh(
        "cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel")
    )
    assert configure_sharding(stage) is True
    units = [m for m in stage.modules() if is_sharded(m)]
    assert configure_sharding(stage) is True  # configure_model runs again for validate/test
    assert [m for m in stage.modules() if is_sharded(m)] == units
    # each DiT block, ControlMLP and camera MLP where the stage has them, and the root; the
    # same again for the EMA shadow
    expected = stage.model_config.depth + stage.use_control + stage.use_cameras + 1
    assert len(units) == 2 * expected
    assert all(isinstance(p, DTensor) for p in stage.model.parameters())
    assert all(isinstance(p, DTensor) for p in stage.ema.shadow.parameters())

    with torch.no_grad():
        for p in stage.model.parameters():
            p.add_(1.0)
    before = [p.full_tensor().clone() for p in stage.ema.shadow.parameters()]
    stage.ema.update(stage.model)  # torch._foreach_lerp_ on DTensors
    for old, new, live in zip(before, stage.ema.shadow.parameters(), stage.model.parameters()):
        assert torch.allclose(new.full_tensor(), 0.5 * old + 0.5 * live.full_tensor())


# --------------------------------------------------------------------------- presets, loggers
def test_fsdp_preset_builds_a_pure_fsdp_strategy(compose_config) -> None:
    from pippo_lightning.stages.sharding import FullyShardedStrategy

    cfg = compose_config("hardware=gpu_fsdp")
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FullyShardedStrategy)
    assert strategy._tensor_parallel_size == 1
    assert cfg.model.overrides.activation_checkpointing is True
    assert ShardingConfig(**cfg.stage.sharding).mixed_precision().param_dtype == torch.bfloat16


def test_slurm_presets_take_device_and_node_counts_from_the_launcher(compose_config) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = ["hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=2"]
    for preset, strategy in (("slurm", "ddp"), ("slurm_fsdp", "FullyShardedStrategy")):
        cfg = compose_config(f"hardware={preset}", *launcher)
        hydra_cfg = HydraConfig.get()
        assert hydra_cfg.launcher._target_.endswith("SlurmLauncher")
        assert hydra_cfg.launcher.tasks_per_node == 2  # one task per GPU
        assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (4, 2)
        assert strategy in str(cfg.trainer.strategy)


def test_tensorboard_logger_writes_the_runs_scalars(
    compose_config, tmp_path: Path, data_dir: Path
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pippo_lightning.cli.train import train

    train(compose_config(*OVERRIDES, "logger=tensorboard", data_dir=data_dir))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "train/lr"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]
