"""Safe loading (issue #13): every torch file a user may have downloaded is read weights-only.

A pickle whose `__reduce__` would run code must be refused on every path that reads such files
(stage checkpoints, resume, init_from, the preflight, the Hub, original weights, metric weights,
tensors inside data samples), with one message naming the file, and the code must never run.
"""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pippo_lightning.checkpoints import files as checkpoint_files
from pippo_lightning.checkpoints import reading as checkpoint_reading
from pippo_lightning.checkpoints.files import AtomicCheckpointIO, read_callback_state
from pippo_lightning.checkpoints.loading import UnsafeCheckpointError, load_torch_file
from pippo_lightning.checkpoints.original import load_original_checkpoint
from pippo_lightning.cli.train import train
from pippo_lightning.compressors import IdentityCompressor
from pippo_lightning.data.npy_io import read_npy_value
from pippo_lightning.data.schema import SampleError
from pippo_lightning.inference import pipeline as inference
from pippo_lightning.metrics import matching
from pippo_lightning.sharing import artifacts, transfer
from pippo_lightning.sharing.original import load_converted_model
from pippo_lightning.stages import dry_build
from pippo_lightning.stages.base import load_stage_weights
from pippo_lightning.stages.config import ConfigError, OptimizerConfig, SamplingConfig
from tests.conftest import TINY_RUN


class CodeRunningPayload:
    """Unpickling this calls `exec`, which writes `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class StorageBytesPayload:
    """Pickles as torch's `_load_from_bytes(data)`, the hook tensors in numpy pickles use, with
    `data` a torch file that holds a code-running pickle."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch.storage._load_from_bytes, (self.data,))


@pytest.fixture(autouse=True)
def torch_defaults_to_full_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torch.load's default `weights_only=False` (as set by this variable, or by torch
    before 2.6): only a load that asks for weights-only explicitly stays safe here."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def bad_checkpoint(tmp_path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint (torch's zip format, passes the CRC check) whose
    hyper_parameters carry a code-running pickle."""
    path = tmp_path / "downloaded.ckpt"
    torch.save(
        {
            "state_dict": {"model.weight": torch.zeros(2)},
            "hyper_parameters": {"model_size": "micro", "payload": CodeRunningPayload(marker)},
            "global_step": 3,
            "callbacks": {},
        },
        path,
    )
    assert checkpoint_files.is_valid_checkpoint(path)
    return path


def assert_refusal(message: str, path: Path) -> None:
    """Names the file, says why (code to unpickle, nothing ran), and what to do."""
    assert f"refused to load {path}" in message
    assert "need code to unpickle (exec)" in message
    assert "nothing in it was run" in message
    assert "load only checkpoints saved with plain data" in message or "--trust-pickle" in message


def test_checkpoint_with_code_running_pickle_is_refused_and_code_never_runs(
    bad_checkpoint: Path, marker: Path, tmp_path: Path
) -> None:
    path = bad_checkpoint
    refusing = {
        "load_torch_file": lambda: load_torch_file(path, mmap=True),
        # resume: the trainer's checkpoint IO, even when Lightning asks for a full unpickle
        "AtomicCheckpointIO": lambda: AtomicCheckpointIO().load_checkpoint(
            path, weights_only=False
        ),
        "read_callback_state": lambda: read_callback_state(path, "wandb_run_id"),
        "init_from": lambda: load_stage_weights(str(path)),
        "hub.safe_torch_load": lambda: checkpoint_reading.safe_torch_load(path),
        "hub.build_bundle": lambda: transfer.build_bundle(path, tmp_path / "bundle", "me/model"),
        "convert original": lambda: load_original_checkpoint(path),
        "convert converted": lambda: load_converted_model(path),
        "metric weights": lambda: matching._load_state_dict(path),
    }
    for where, load in refusing.items():
        with pytest.raises(UnsafeCheckpointError) as info:
            load()
        assert_refusal(str(info.value), path)
        assert not marker.exists(), f"{where} ran the pickle's code"

    with pytest.raises(UnsafeCheckpointError, match=r"--trust-pickle .* off by default"):
        load_original_checkpoint(path)  # the opt-in is named, and that it is off
    with pytest.raises(inference.CheckpointError) as info:
        inference.load_stage(path, IdentityCompressor(space_to_depth=4))
    assert_refusal(str(info.value), path)
    with pytest.raises(ConfigError, match="refused to load"):
        dry_build.checkpoint_shapes(str(path))
    assert checkpoint_reading.checkpoint_metadata(path) is None
    assert artifacts._artifact_metadata(path) == {}
    assert not marker.exists()


def test_sharded_checkpoint_metadata_with_code_running_pickle_is_refused(
    tmp_path: Path, marker: Path
) -> None:
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    torch.save({"callbacks": {"x": CodeRunningPayload(marker)}}, sharded / "meta.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused to load .*meta.pt"):
        read_callback_state(sharded, "wandb_run_id")
    assert not marker.exists()


def test_sample_file_whose_tensor_bytes_run_code_is_refused(tmp_path: Path, marker: Path) -> None:
    inner = tmp_path / "inner.pt"
    torch.save({"x": CodeRunningPayload(marker)}, inner)
    sample = tmp_path / "sample.npy"
    np.save(sample, np.array({"image": StorageBytesPayload(inner.read_bytes())}, dtype=object))
    with pytest.raises(SampleError, match=r"sample\.npy: cannot read .*need code to unpickle"):
        read_npy_value(sample)
    assert not marker.exists()


@pytest.fixture(scope="module")
def studio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic studio for the resume tests (made by the first run that needs it)."""
    return tmp_path_factory.mktemp("studio")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="wandb-logger-reads-the-run-id-first"),
        pytest.param(["logger=none"], id="atomic-checkpoint-io"),
        pytest.param(["logger=none", "atomic_checkpoints=false"], id="lightnings-own-io"),
    ],
)
def test_resuming_from_a_code_running_checkpoint_is_refused(
    compose_config, studio_dir: Path, bad_checkpoint: Path, marker: Path, overrides: list[str]
) -> None:
    cfg = compose_config(
        *TINY_RUN,
        "data.synthetic.num_train_subjects=1",  # the refusal comes before any step
        "data.batch_size=1",
        "callbacks.turntable_video=null",
        f"ckpt_path={bad_checkpoint}",
        *overrides,
        data_dir=studio_dir,
    )
    with pytest.raises(UnsafeCheckpointError) as info:
        train(cfg)
    assert_refusal(str(info.value), bad_checkpoint)
    assert not marker.exists()


def test_checkpoint_holding_paths_and_stage_configs_still_loads(tmp_path: Path) -> None:
    """What a checkpoint may legitimately hold beyond tensors and plain data: a `Path` (e.g. a
    hyperparameter given from Python) and the stages' config dataclasses."""
    path = tmp_path / "own.ckpt"
    hparams = {
        "init_from": pathlib.Path("/runs/p2/last.ckpt"),
        "optimizer": OptimizerConfig(lr=3e-4),
        "sampling": SamplingConfig(num_steps=7),
    }
    torch.save({"hyper_parameters": hparams, "state_dict": {"w": torch.ones(1)}}, path)
    loaded = load_torch_file(path)
    assert loaded["hyper_parameters"] == hparams
    assert AtomicCheckpointIO().load_checkpoint(path)["hyper_parameters"] == hparams
