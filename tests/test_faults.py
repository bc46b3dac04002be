"""Fault injection (issue #7): corrupt checkpoints, NaN batches, SIGTERM/SIGUSR1, kills + resume.

`make test-faults` runs this file, slow scenarios included.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from pippo_lightning.callbacks.reliability import PREEMPTED_EXIT_CODE, NonFiniteError
from pippo_lightning.checkpointing import (
    AtomicCheckpointIO,
    CorruptCheckpointError,
    find_resume_checkpoint,
    is_valid_checkpoint,
    resolve_ckpt_path,
)
from pippo_lightning.cli.train import train
from tests.conftest import REPO_ROOT, TINY_RUN
from tests.test_resume import read_losses

# ----------------------------------------------------------------------------- helpers


def truncate(path: Path) -> None:
    """Simulate a crash mid-write / a partial copy: keep the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bytes(path: Path) -> None:
    """Simulate bit rot: corrupt bytes in the middle of the file, size unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def write_ckpt(io: AtomicCheckpointIO, path: Path, step: int, mtime: float) -> None:
    io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(256) * step}}, path)
    os.utime(path, (mtime, mtime))


# ----------------------------------------------------------------------------- atomic files


def test_atomic_save_leaves_no_temporary_and_loads(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "a.ckpt"
    io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.arange(4)}}, path)
    assert [p.name for p in path.parent.iterdir()] == ["a.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 3


@pytest.mark.parametrize("damage", [truncate, flip_bytes])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(tmp_path: Path, damage: Any) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.randn(4096)}}, path)
    damage(path)
    assert not is_valid_checkpoint(path)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        io.load_checkpoint(path)
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        resolve_ckpt_path(str(path), auto_resume=False, checkpoint_dir=tmp_path)


def test_auto_resume_falls_back_to_the_previous_good_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    for step in (1, 2, 3):
        write_ckpt(io, tmp_path / f"step{step}.ckpt", step, mtime=1000 + step)
    assert find_resume_checkpoint(tmp_path) == tmp_path / "step3.ckpt"
    truncate(tmp_path / "step3.ckpt")
    flip_bytes(tmp_path / "step2.ckpt")
    assert resolve_ckpt_path("auto", False, tmp_path) == str(tmp_path / "step1.ckpt")
    assert resolve_ckpt_path(None, True, tmp_path) == str(tmp_path / "step1.ckpt")
    assert resolve_ckpt_path(None, False, tmp_path) is None
    assert resolve_ckpt_path(None, True, tmp_path / "none-yet") is None


def test_removal_never_deletes_the_only_good_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    write_ckpt(io, tmp_path / "good.ckpt", 1, mtime=1001)
    write_ckpt(io, tmp_path / "bad.ckpt", 2, mtime=1002)
    truncate(tmp_path / "bad.ckpt")
    io.remove_checkpoint(tmp_path / "good.ckpt")  # refused: bad.ckpt cannot stand in
    assert (tmp_path / "good.ckpt").is_file()
    io.remove_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def tiny(compose_config, out: Path, max_steps: int, *extra: str):
    return compose_config(
        *TINY_RUN,
        f"paths.output_dir={out}",
        f"trainer.max_steps={max_steps}",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.turntable_video=null",
        *extra,
    )


KEEP_LAST_2 = (
    "callbacks.model_checkpoint.monitor=step",
    "callbacks.model_checkpoint.mode=max",
    "callbacks.model_checkpoint.save_top_k=2",
)


def test_keep_last_n_then_resume_past_corrupt_newest(compose_config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny(compose_config, out, 4, *KEEP_LAST_2))
    ckpt_dir = out / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == [
        "last.ckpt",
        "step0000003.ckpt",
        "step0000004.ckpt",
    ]
    assert not list(ckpt_dir.glob(".*tmp*"))
    # the two newest files are damaged: resume must use step 3
    truncate(ckpt_dir / "last.ckpt")
    flip_bytes(ckpt_dir / "step0000004.ckpt")
    assert resolve_ckpt_path(None, True, ckpt_dir) == str(ckpt_dir / "step0000003.ckpt")
    result = train(tiny(compose_config, out, 5, "auto_resume=true", *KEEP_LAST_2))
    assert result.trainer.global_step == 5


# ----------------------------------------------------------------------------- NaN / Inf


class PoisonBatches(L.Callback):
    """Turns the images of the batches at the given global steps into NaN (fault injection)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in self.steps:
            batch["images"].fill_(float("nan"))


def poison(*steps: int) -> tuple[str, str]:
    return (
        "+callbacks.poison._target_=tests.test_faults.PoisonBatches",
        f"+callbacks.poison.steps=[{','.join(map(str, steps))}]",
    )


def test_nan_batches_are_skipped_and_counted(compose_config, tmp_path: Path) -> None:
    result = train(tiny(compose_config, tmp_path / "run", 4, *poison(1, 2)))
    assert result.trainer.global_step == 4
    assert result.metrics["train/skipped_steps"] == 2.0
    for name, value in result.stage.state_dict().items():
        assert torch.isfinite(value.float()).all(), name


def test_consecutive_nan_batches_abort_with_their_indices(compose_config, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny(
        compose_config, out, 6, *poison(1, 2, 3), "callbacks.nonfinite_guard.max_consecutive=3"
    )
    with pytest.raises(NonFiniteError, match="3 consecutive") as err:
        train(cfg)
    dumped = json.loads((out / "nonfinite_batches.json").read_text())
    assert [row["global_step"] for row in dumped] == [1, 2, 3]
    assert all(row["index"] for row in dumped)
    assert str(dumped[0]["index"]) in str(err.value)


# ----------------------------------------------------------------------------- signals


def start_cli(out: Path, data: Path, max_steps: int, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO_ROOT),
    }
    overrides = [
        *TINY_RUN,
        f"paths.output_dir={out}",
        f"paths.data_dir={data}",
        f"hydra.run.dir={out}",
        f"trainer.max_steps={max_steps}",
        "trainer.deterministic=true",
        "trainer.val_check_interval=1000",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.turntable_video=null",
        "callbacks.progress_bar=null",
        "+callbacks.losses._target_=tests.test_resume.LossRecorder",
        f"+callbacks.losses.path={out / 'losses.jsonl'}",
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "pippo_lightning.cli.train", *overrides],
        cwd=out.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_steps(
    proc: subprocess.Popen[str], losses: Path, steps: int, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if losses.is_file() and len(losses.read_text().splitlines()) >= steps:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended early ({proc.returncode}): {proc.stdout.read()[-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("run did not reach the step in time")


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)]
)
def test_preemption_signal_checkpoints_and_exits_distinctly(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "run"
    out.mkdir()
    proc = start_cli(out, tmp_path / "data", 10_000)
    wait_for_steps(proc, out / "losses.jsonl", 3)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    last = out / "checkpoints" / "last.ckpt"
    assert is_valid_checkpoint(last)
    # the step in flight when the signal came was finished and is in the checkpoint
    assert saved_step(last) == len(read_losses(out / "losses.jsonl"))


@pytest.mark.slow
def test_killed_at_random_steps_resumes_to_the_same_losses(compose_config, tmp_path: Path) -> None:
    total = 8
    reference = tmp_path / "reference"
    reference.mkdir()
    proc = start_cli(reference, tmp_path / "data", total)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    expected = read_losses(reference / "losses.jsonl")

    out = tmp_path / "killed"
    out.mkdir()
    rng = random.Random(7)
    for _ in range(2):
        proc = start_cli(out, tmp_path / "data", total, "auto_resume=true")
        done = len(read_losses(out / "losses.jsonl")) if (out / "losses.jsonl").exists() else 0
        wait_for_steps(proc, out / "losses.jsonl", min(total - 1, done + rng.randint(1, 3)))
        proc.kill()  # SIGKILL: no handler runs, a checkpoint may be half-written
        proc.wait()
    proc = start_cli(out, tmp_path / "data", total, "auto_resume=true")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    assert read_losses(out / "losses.jsonl") == expected
