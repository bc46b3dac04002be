"""Fault injection (issue #7): corrupt checkpoints, NaN batches, SIGTERM/SIGUSR1, kills + resume.

`make test-faults` runs this file, slow scenarios included.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from pippo_lightning.callbacks.reliability import (
    PREEMPTED_EXIT_CODE,
    NonFiniteError,
    NonFiniteGuard,
)
from pippo_lightning.checkpoints.files import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    checkpoint_problem,
    find_resume_checkpoint,
    is_valid_checkpoint,
    resolve_ckpt_path,
)
from pippo_lightning.checkpoints.loading import CorruptCheckpointError
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


def tiny(compose_config, out: Path, max_steps: int, *extra: str, data_dir: Path | None = None):
    return compose_config(
        *TINY_RUN,
        f"paths.output_dir={out}",
        f"trainer.max_steps={max_steps}",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.turntable_video=null",
        *extra,
        data_dir=data_dir,
    )


@pytest.fixture(scope="module")
def studio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the module's newer runs: the tiny studio is rendered once."""
    return tmp_path_factory.mktemp("studio")


#: no validation, no W&B: the scenarios below are about training steps and checkpoints
QUICK = ("trainer.val_check_interval=1000", "logger=csv")


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


# ----------------------------------------------------------------------------- disk full


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount real tmpfs file systems of a given size (bytes); unmounted at teardown.

    A tmpfs is a real file system that says ENOSPC when full, exactly as a full disk does.
    Mounting needs root (or CAP_SYS_ADMIN); elsewhere the disk-full scenario is skipped and
    says why.
    """
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        target = tmp_path / f"tmpfs{len(mounts)}"
        target.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command: cannot make a small file system to fill")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}"
            )
        mounts.append(target)
        return target

    yield mount
    for target in reversed(mounts):
        # lazy: a handle left open by a failed test must not keep the mount (and fail teardown)
        subprocess.run(["umount", "-l", str(target)], check=False)


def resize_tmpfs(target: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    compose_config, tmp_path: Path, studio_dir: Path, small_tmpfs: Callable[[int], Path]
) -> None:
    """A real run checkpointing onto a small tmpfs: the second checkpoint does not fit."""
    ckpt_dir = small_tmpfs(64 * 2**20)
    out = tmp_path / "run"
    only_last = (
        f"callbacks.model_checkpoint.dirpath={ckpt_dir}",
        "callbacks.model_checkpoint.save_top_k=0",  # last.ckpt only: one file per save
        *QUICK,
    )

    def run(max_steps: int, *extra: str) -> Any:
        return train(tiny(compose_config, out, max_steps, *only_last, *extra, data_dir=studio_dir))

    run(1)
    last = ckpt_dir / "last.ckpt"
    size = last.stat().st_size
    # room for the checkpoint plus half of another: the atomic write of the next one (a
    # temporary file next to the old one) runs out of space half-way
    limit = -(-(size * 3 // 2) // 4096) * 4096
    resize_tmpfs(ckpt_dir, limit)

    with pytest.raises(CheckpointWriteError) as err:
        run(3, "auto_resume=true")
    message = str(err.value)
    assert f"cannot write checkpoint {last}" in message
    assert "no space left on device (the disk is full)" in message
    assert "previous last.ckpt is intact" in message
    assert "\n" not in message  # one `error:` line from the CLI
    # no partial file left, the previous checkpoint whole, loadable and the one to resume from
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]
    assert checkpoint_problem(last) is None
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 1
    assert resolve_ckpt_path(None, True, ckpt_dir) == str(last)

    # with room again, auto_resume continues from it
    resize_tmpfs(ckpt_dir, 64 * 2**20)
    result = run(3, "auto_resume=true")
    assert result.trainer.global_step == 3
    assert saved_step(last) == 3
    # the figures, for `pytest -s`: about 13.4 MB of checkpoint, a 20.2 MB tmpfs
    print(f"checkpoint {size} bytes, tmpfs limited to {limit} bytes")


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


class StepRecorder(L.Callback):
    """Per rank, after each training step: a digest of the weights and of the EMA, the EMA's
    update count and the guard's skip counter, as JSON lines in `<dirpath>/steps_rank<r>.jsonl`.

    Equal digests mean bit-identical tensors, so ranks (and steps) can be compared exactly.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))
        row = {
            "step": trainer.global_step,
            "skipped": guard.skipped,
            "model": digest(pl_module.model),
            "ema": digest(pl_module.ema.shadow),
            "ema_updates": int(pl_module.ema.num_updates),
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with (self.dirpath / f"steps_rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def record_steps(out: Path) -> tuple[str, str]:
    return (
        "+callbacks.steps._target_=tests.test_faults.StepRecorder",
        f"+callbacks.steps.dirpath={out}",
    )


def read_steps(out: Path, rank: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"steps_rank{rank}.jsonl").read_text().splitlines()]


def test_ema_stays_put_on_a_skipped_step(compose_config, tmp_path: Path, studio_dir: Path) -> None:
    out = tmp_path / "run"
    train(tiny(compose_config, out, 3, *poison(1), *record_steps(out), *QUICK, data_dir=studio_dir))
    before, skipped, after = read_steps(out)
    assert [before["skipped"], skipped["skipped"], after["skipped"]] == [0, 1, 1]
    # the skipped step changed neither the weights nor their average, nor its update count
    assert skipped["model"] == before["model"]
    assert skipped["ema"] == before["ema"]
    assert skipped["ema_updates"] == before["ema_updates"] == 1
    # the next good step moves both again
    assert after["model"] != skipped["model"] and after["ema"] != skipped["ema"]
    assert after["ema_updates"] == 2


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


# ----------------------------------------------------------------------------- NaN under DDP


class PoisonOnRank(L.Callback):
    """Fault injection on one rank only, at the given global steps.

    image_steps: NaN input images (a NaN loss on that rank; DDP's gradient average then spreads
    it). grad_steps: NaN in one gradient *after* DDP's all-reduce, so only that rank sees it —
    only the guard's own agreement between ranks can make the others skip that step too.
    """

    def __init__(self, rank: int, image_steps: list[int], grad_steps: list[int]) -> None:
        self.rank, self.image_steps, self.grad_steps = rank, set(image_steps), set(grad_steps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step in self.image_steps:
            batch["images"].fill_(float("nan"))

    def on_after_backward(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step in self.grad_steps:
            grad = next(p.grad for p in pl_module.model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")


def poison_rank(
    rank: int, images: tuple[int, ...] = (), grads: tuple[int, ...] = ()
) -> tuple[str, ...]:
    return (
        "+callbacks.poison_rank._target_=tests.test_faults.PoisonOnRank",
        f"+callbacks.poison_rank.rank={rank}",
        f"+callbacks.poison_rank.image_steps=[{','.join(map(str, images))}]",
        f"+callbacks.poison_rank.grad_steps=[{','.join(map(str, grads))}]",
    )


def run_ddp(out: Path, data: Path, *extra: str, timeout: float = 240) -> tuple[int, str]:
    """The CLI on two CPU ranks (gloo); a run that does not end in time is a hang: every
    process of it is killed and the test fails."""
    from tests.test_distributed import cli_env

    overrides = [
        *TINY_RUN,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"paths.data_dir={data}",
        f"hydra.run.dir={out}",
        "callbacks.turntable_video=null",
        "callbacks.progress_bar=null",
        *QUICK,
        *extra,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pippo_lightning.cli.train", *overrides],
        cwd=out.parent,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # rank 1 joins this process group: one kill stops both
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the DDP run hung (> {timeout} s):\n{output[-3000:]}")
    return proc.returncode, output


def logged_skips(out: Path) -> list[float]:
    (metrics,) = out.glob("csv/version_*/metrics.csv")
    with metrics.open() as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")]


def test_nan_on_one_ddp_rank_makes_every_rank_skip(tmp_path: Path, studio_dir: Path) -> None:
    out = tmp_path / "run"
    # step 1: NaN loss on rank 1; step 3: NaN gradient on rank 1 only, after the all-reduce
    code, output = run_ddp(
        out,
        studio_dir,
        "trainer.max_steps=5",
        *poison_rank(1, images=(1,), grads=(3,)),
        *record_steps(out),
    )
    assert code == 0, output[-3000:]
    ranks = [read_steps(out, rank) for rank in (0, 1)]
    assert [row["step"] for row in ranks[0]] == [1, 2, 3, 4, 5]
    # the ranks never diverge: bit-identical weights and EMA after every step
    for row0, row1 in zip(*ranks, strict=True):
        assert row0 == row1, (row0, row1)
    rows = ranks[0]
    assert [row["skipped"] for row in rows] == [0, 1, 1, 2, 2]
    for skipped in (1, 3):  # neither the weights nor their average moved
        assert rows[skipped]["model"] == rows[skipped - 1]["model"]
        assert rows[skipped]["ema"] == rows[skipped - 1]["ema"]
        assert rows[skipped]["ema_updates"] == rows[skipped - 1]["ema_updates"]
    assert rows[-1]["ema_updates"] == 3
    assert logged_skips(out)[-1] == 2.0


def test_consecutive_nan_on_one_ddp_rank_aborts_every_rank(
    tmp_path: Path, studio_dir: Path
) -> None:
    out = tmp_path / "run"
    code, output = run_ddp(
        out,
        studio_dir,
        "trainer.max_steps=6",
        *poison_rank(1, grads=(1, 2)),
        "callbacks.nonfinite_guard.max_consecutive=2",
        timeout=180,
    )
    # both ranks stop at the same step with the same one-line message; nothing hangs
    assert code == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, output[-3000:]
    for line in errors:
        assert "2 consecutive training steps had NaN/Inf gradients" in line
        assert "step 1: index" in line and "step 2: index" in line
    dumped = json.loads((out / "nonfinite_batches.json").read_text())
    assert [row["global_step"] for row in dumped] == [1, 2]


# ----------------------------------------------------------------------------- signals


def start_cli(out: Path, data: Path, max_steps: int, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        # the repository (for tests.*) ahead of the caller's path, which may name the sources
        # under test (a worktree's src/ rather than the installed checkout)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
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
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


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
