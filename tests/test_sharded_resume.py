"""Sharded (FSDP2) checkpoints in the resume path: verified shard by shard, found by auto_resume,
replaced whole. The end-to-end resume on two CPU ranks is in test_distributed.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from pippo_lightning.checkpoints.atomic import replace_directory
from pippo_lightning.checkpoints.files import (
    checkpoint_problem,
    read_callback_state,
    resolve_ckpt_path,
)


def write_sharded(path: Path, step: int, mtime: float) -> Path:
    """A sharded checkpoint as Lightning's ModelParallelStrategy writes it (one rank here):
    torch.distributed.checkpoint's shard file and `.metadata`, then `meta.pt`."""
    state = {"state_dict": {"w": torch.full((512,), float(step))}}
    dcp.save(state, checkpoint_id=path, no_dist=True)
    meta = {"global_step": step, "callbacks": {"ExactResume": {"wandb_run_id": f"run{step}"}}}
    torch.save(meta, path / "meta.pt")
    os.utime(path / "meta.pt", (mtime, mtime))
    return path


def shard_of(path: Path) -> Path:
    (shard,) = path.glob("*.distcp")
    return shard


def test_sharded_checkpoint_with_a_missing_or_cut_part_is_refused_by_name(tmp_path: Path) -> None:
    path = write_sharded(tmp_path / "last.ckpt", 4, mtime=1000)
    assert checkpoint_problem(path) is None
    shard = shard_of(path)
    whole = shard.read_bytes()

    shard.write_bytes(whole[: len(whole) // 2])
    assert f"shard {shard.name} is truncated" in checkpoint_problem(path)
    shard.unlink()
    assert f"without its shard {shard.name}" in checkpoint_problem(path)
    shard.write_bytes(whole)

    meta = (path / "meta.pt").read_bytes()
    (path / "meta.pt").write_bytes(meta[: len(meta) // 2])
    assert "bad meta.pt" in checkpoint_problem(path)
    (path / "meta.pt").write_bytes(meta)

    (path / ".metadata").unlink()
    assert "without .metadata" in checkpoint_problem(path)


def test_auto_resume_takes_the_newest_whole_sharded_checkpoint(tmp_path: Path) -> None:
    older = write_sharded(tmp_path / "step0000002.ckpt", 2, mtime=1000)
    newest = write_sharded(tmp_path / "last.ckpt", 4, mtime=2000)
    assert resolve_ckpt_path(None, True, tmp_path) == str(newest)
    assert read_callback_state(newest, "wandb_run_id") == "run4"
    # a save cut short (one shard short of what .metadata lists) falls back to the previous one
    shard = shard_of(newest)
    shard.write_bytes(shard.read_bytes()[:100])
    assert resolve_ckpt_path(None, True, tmp_path) == str(older)
    assert resolve_ckpt_path("auto", False, tmp_path) == str(older)


def test_a_sharded_checkpoint_is_replaced_whole(tmp_path: Path) -> None:
    final = write_sharded(tmp_path / "last.ckpt", 2, mtime=1000)
    tmp = write_sharded(tmp_path / ".last.ckpt.tmp", 4, mtime=2000)
    replace_directory(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(final / "meta.pt", weights_only=False)["global_step"] == 4
    loaded = {"state_dict": {"w": torch.zeros(512)}}
    dcp.load(loaded, checkpoint_id=final, no_dist=True)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((512,), 4.0))


@pytest.mark.parametrize("old", ["file", "none"])
def test_a_sharded_checkpoint_replaces_a_file_or_nothing(tmp_path: Path, old: str) -> None:
    final = tmp_path / "last.ckpt"
    if old == "file":
        final.write_bytes(b"an older single-file checkpoint")
    replace_directory(write_sharded(tmp_path / ".last.ckpt.tmp", 4, mtime=2000), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert checkpoint_problem(final) is None
