"""Kept libraries instead of our own code (issue #17.4): Lightning's ThroughputMonitor (with
FLOPs for MFU), a NaN guard with one host sync per step, `train/loss` all-reduced only when it
is logged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from pippo_lightning.callbacks.reliability import NonFiniteGuard, all_finite
from pippo_lightning.callbacks.throughput import StepThroughputMonitor, batch_samples, batch_views
from pippo_lightning.cli.train import train
from tests.conftest import TINY_RUN


@pytest.fixture
def count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every `bool(tensor)` (what a host sync looks like on the Python side) is counted."""
    calls: list[int] = []
    original = torch.Tensor.__bool__

    def counting(self: torch.Tensor) -> bool:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counting)
    return calls


def test_all_finite_syncs_once_whatever_the_number_of_tensors(count_host_syncs):
    grads = [torch.ones(3) for _ in range(40)]
    assert all_finite(grads) is True
    grads[17][1] = float("nan")
    assert all_finite(grads) is False
    grads[17][1] = float("inf")
    assert all_finite(grads) is False
    assert len(count_host_syncs) == 3  # one per call, not one per tensor
    assert all_finite([]) is True


def test_nan_guard_checks_a_step_with_one_host_sync(count_host_syncs):
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(10)])  # 20 tensors
    model(torch.randn(2, 4)).sum().backward()
    optimizer = torch.optim.AdamW(model.parameters())
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
        global_step=0,
    )
    guard = NonFiniteGuard()
    count_host_syncs.clear()
    guard.on_before_optimizer_step(trainer, None, optimizer)
    assert len(count_host_syncs) == 1 and guard.skipped == 0
    next(model.parameters()).grad[0, 0] = float("nan")
    guard.on_before_optimizer_step(trainer, None, optimizer)
    assert guard.skipped == 1 and all(p.grad is None for p in model.parameters())


def test_throughput_counts_subjects_and_views():
    batch = {"images": torch.zeros(3, 5, 3, 8, 8)}
    assert (batch_samples(batch), batch_views(batch)) == (3, 15)
    assert batch_views({"latents": torch.zeros(2, 4, 12, 4, 4)}) == 8
    assert isinstance(StepThroughputMonitor(), ThroughputMonitor)


def test_training_logs_lightning_throughput_flops_and_syncs_the_loss_only_when_logged(
    compose_config, monkeypatch
):
    from pippo_lightning.stages.base import PippoStage

    synced: list[bool] = []
    original_log = PippoStage.log

    def recording_log(self, name, value, *args, **kwargs):
        if name == "train/loss":
            synced.append(kwargs.get("sync_dist", False))
        return original_log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(PippoStage, "log", recording_log)
    cfg = compose_config(*TINY_RUN, "trainer.max_steps=5", "trainer.log_every_n_steps=2")
    result = train(cfg)
    # steps 2 and 4 reach the loggers, step 5 is the last
    assert synced == [False, True, False, True, True]
    (monitor,) = [cb for cb in result.trainer.callbacks if isinstance(cb, StepThroughputMonitor)]
    assert monitor.flops_per_batch and monitor.flops_per_batch > 0
    assert result.stage.flops_per_batch == monitor.flops_per_batch
