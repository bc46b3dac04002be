"""Exact resume (issue #7): interrupted + resumed training equals uninterrupted training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from google.protobuf.message import DecodeError

from pippo_lightning.cli.train import TrainResult, train
from pippo_lightning.data.resumable import ResumableDataLoader
from pippo_lightning.data.samplers import EpochSampler
from tests.conftest import TINY_RUN
from tests.wandb_offline import read_offline_run

TOTAL_STEPS = 6  # 3 training subjects at batch size 2: two batches (2 + 1) per epoch


class LossRecorder(L.Callback):
    """Appends (global step, loss as a float hex string) per training step to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "loss": loss.hex()}) + "\n")


def read_losses(path: Path) -> dict[int, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def run(compose_config, out: Path, max_steps: int, *extra: str) -> TrainResult:
    cfg = compose_config(
        *TINY_RUN,
        f"paths.output_dir={out}",
        f"trainer.max_steps={max_steps}",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.turntable_video=null",
        "+callbacks.losses._target_=tests.test_resume.LossRecorder",
        f"+callbacks.losses.path={out / 'losses.jsonl'}",
        *extra,
    )
    return train(cfg)


def offline_run_id(out: Path, timeout_s: float = 60.0) -> str:
    """The offline W&B run id under `out`. Under heavy load W&B's service can still be writing the
    run record (or the record after it) when `finish()` has returned, so the read is retried for
    a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run_id = read_offline_run(out).run_id
        except DecodeError:  # caught mid-write: the last record is not complete yet
            run_id = ""
        if run_id or time.monotonic() >= deadline:
            return run_id
        time.sleep(0.5)


def test_interrupted_runs_continue_bit_for_bit(compose_config, tmp_path: Path) -> None:
    full = run(compose_config, tmp_path / "full", TOTAL_STEPS)
    expected = read_losses(tmp_path / "full" / "losses.jsonl")
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))
    full_state = {k: v.clone() for k, v in full.stage.state_dict().items()}

    # step 1 and 3: mid-epoch (the loader must skip what was trained on); step 2: epoch boundary
    for k in (1, 2, 3):
        out = tmp_path / f"stop{k}"
        first = run(compose_config, out, k)
        assert first.trainer.global_step == k
        first_run_id = offline_run_id(out)
        assert first_run_id, f"no W&B run id under {out}"
        resumed = run(compose_config, out, TOTAL_STEPS, "auto_resume=true")
        assert resumed.trainer.global_step == TOTAL_STEPS
        assert read_losses(out / "losses.jsonl") == expected, f"losses differ after stopping at {k}"
        # model, EMA shadow (a submodule) and its update count all round-trip
        state = resumed.stage.state_dict()
        assert any(name.startswith("ema.shadow.") for name in state)
        for name, value in full_state.items():
            assert torch.equal(state[name], value), f"{name} differs after stopping at {k}"
        # the resumed run logs to the same W&B run
        assert offline_run_id(out) == first_run_id


def test_the_training_stream_is_the_stages_and_round_trips_through_its_checkpoint(
    compose_config, tmp_path: Path
) -> None:
    """The stage owns the random stream of its training steps: drawing from it leaves the
    global generator alone, drawing elsewhere does not move it, and its checkpoint carries it."""
    stage = run(compose_config, tmp_path / "run", 2).stage
    saved: dict[str, Any] = {}
    stage.on_save_checkpoint(saved)
    global_before = torch.get_rng_state()
    expected = stage.sample_condition_drops(64)
    assert torch.equal(torch.get_rng_state(), global_before)

    torch.rand(5)  # a draw elsewhere (validation, loader start-up) ...
    stage.sample_condition_drops(64)  # ... and further training draws
    stage.on_load_checkpoint(saved)  # resuming from the checkpoint continues where it left off
    again = stage.sample_condition_drops(64)
    assert all(torch.equal(again[name], expected[name]) for name in expected)
    assert expected["ref"].any() and not expected["ref"].all()  # a real draw (p = 0.2)


class _IndexOf(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 11

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[0]


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])
def test_resumable_loader_continues_with_the_same_batches(stop_after: int) -> None:
    def loader() -> ResumableDataLoader:
        # EpochSampler yields (index, epoch) keys; the dataset hands back the index
        dataset = _IndexOf()
        return ResumableDataLoader(dataset, batch_size=2, sampler=EpochSampler(11, seed=3))

    reference = loader()
    reference.sampler.set_epoch(1)
    expected = [b.tolist() for b in reference]

    interrupted = loader()
    interrupted.sampler.set_epoch(1)
    iterator = iter(interrupted)
    seen = [next(iterator).tolist() for _ in range(stop_after)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": stop_after}

    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + [b.tolist() for b in resumed] == expected
    # one-shot: the next epoch is whole again
    assert len(list(resumed)) == len(expected)
