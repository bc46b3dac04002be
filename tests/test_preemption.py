"""Preemption brings the run back: requeued under SLURM, resumed by the next launch elsewhere.

Both paths run `pippo-train` as a process, signal it mid-run, and launch it again exactly as the
scheduler (or the user) would: the same command line, and under SLURM the same job id. The
SLURM path runs with the environment variables Lightning's SLURMEnvironment reads and a fake
`scontrol` on PATH that records its arguments.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pippo_lightning.callbacks.preemption import PREEMPTED_EXIT_CODE
from pippo_lightning.checkpoints.files import is_valid_checkpoint
from tests.conftest import REPO_ROOT, TINY_RUN
from tests.test_faults import saved_step, wait_for_steps
from tests.test_resume import run as train_tiny

TOTAL = 6

#: what `srun` sets for a one-task job step (Lightning: SLURM_NTASKS marks a SLURM job)
SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "pippo-p3",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A `scontrol` that appends its arguments to a file: (bin dir for PATH, the record)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, record


def launch(root: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`pippo-train` with the tiny run in `root`; losses go to `<run dir>/losses.jsonl`."""
    overrides = [
        *TINY_RUN,
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
        f"trainer.max_steps={TOTAL}",
        "trainer.deterministic=true",
        "trainer.val_check_interval=1000",
        "callbacks.model_checkpoint.every_n_train_steps=1000",
        "callbacks.turntable_video=null",
        "callbacks.progress_bar=null",
        "logger=csv",
        "+callbacks.losses._target_=tests.test_resume.LossRecorder",
        "+callbacks.losses.path=${paths.output_dir}/losses.jsonl",
        *extra,
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # the repository (for tests.*) ahead of the caller's path (the sources under test)
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "pippo_lightning.cli.train", *overrides],
        cwd=root,
        env={**base, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], expected: int) -> str:
    output, _ = proc.communicate(timeout=480)
    assert proc.returncode == expected, output[-3000:]
    return output


def stop_mid_run(proc: subprocess.Popen[str], losses: Path, signum: int) -> int:
    """Signal the run after its second step; the step it had saved when it exited."""
    wait_for_steps(proc, losses, 2, timeout=480)
    proc.send_signal(signum)
    finish(proc, PREEMPTED_EXIT_CODE)
    last = losses.parent / "checkpoints" / "last.ckpt"
    assert is_valid_checkpoint(last)
    return saved_step(last)


def assert_continued(losses: Path, saved: int) -> None:
    """Every step once: the relaunch started after the saved step, not from the beginning."""
    steps = [json.loads(line)["step"] for line in losses.read_text().splitlines()]
    assert 0 < saved < TOTAL
    assert steps == list(range(1, TOTAL + 1)), (saved, steps)


def test_sigusr1_under_slurm_requeues_through_scontrol_and_resumes(tmp_path: Path) -> None:
    bin_dir, record = fake_scontrol(tmp_path)
    env = {**SLURM_JOB, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # no run directory given: under SLURM it is named after the job id, so the requeued job
    # (same id) lands in it again
    run = tmp_path / "outputs" / "train" / "runs" / "slurm-4242_p3_micro_32px"
    proc = launch(tmp_path, env=env)
    saved = stop_mid_run(proc, run / "losses.jsonl", signal.SIGUSR1)
    # requeued once, through scontrol, after the one checkpoint: Lightning's own SLURM handler
    # (which would save hpc_ckpt_*.ckpt mid-step and requeue a second time) never ran
    assert record.read_text().splitlines() == ["requeue 4242"]
    assert not list(tmp_path.rglob("hpc_ckpt_*"))

    # SLURM starts the requeued job: the same command, the same job id
    finish(launch(tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}), 0)
    assert [p.name for p in run.parent.iterdir()] == [run.name]
    assert_continued(run / "losses.jsonl", saved)
    assert record.read_text().splitlines() == ["requeue 4242"]  # finished: no second requeue


@pytest.mark.slow
def test_sigterm_outside_slurm_then_the_same_launch_resumes_without_ckpt_path(
    tmp_path: Path,
) -> None:
    run = tmp_path / "my_run"
    proc = launch(tmp_path, f"hydra.run.dir={run}")
    saved = stop_mid_run(proc, run / "losses.jsonl", signal.SIGTERM)
    finish(launch(tmp_path, f"hydra.run.dir={run}"), 0)
    assert_continued(run / "losses.jsonl", saved)


def test_a_second_launch_in_the_same_run_directory_continues_it(compose_config, tmp_path) -> None:
    """auto_resume is the default: no ckpt_path, no flag — the run directory is the key."""
    out = tmp_path / "run"
    assert train_tiny(compose_config, out, 2, "logger=csv").trainer.global_step == 2
    resumed = train_tiny(compose_config, out, 4, "logger=csv")
    assert resumed.trainer.global_step == 4
    steps = [json.loads(line)["step"] for line in (out / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # a fresh directory starts fresh
    assert train_tiny(compose_config, tmp_path / "other", 1, "logger=csv").trainer.global_step == 1


def test_run_directory_stamp_is_the_slurm_job_so_a_requeue_finds_it(monkeypatch) -> None:
    from pippo_lightning.cli.common import run_stamp

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run_stamp())  # no SLURM: the time
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NAME", "pippo-p3")
    assert run_stamp() == "slurm-77"
    # an array task is requeued (and named) as <array job>_<task>, as Lightning requeues it
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_stamp() == "slurm-70_3"
    # an interactive allocation runs several runs: they must not share (and resume) one dir
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert run_stamp().startswith("20")
