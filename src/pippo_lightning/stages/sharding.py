"""Fully sharded data-parallel training (FSDP2) of a Pippo stage.

Under Lightning's `ModelParallelStrategy` every rank gets a device mesh and the stage's
`configure_model` hook runs once the processes exist; there `configure_sharding` applies
`fully_shard` to each DiT block, the ControlMLP, the camera MLP and then the model root, so each
rank keeps 1/N of every weight, gradient and AdamW moment and gathers one block at a time.

The EMA shadow is sharded the same way: it is a deep copy of the unsharded model, so after
sharding rank r's shadow shard covers exactly the elements of rank r's model shard, and the
EMA update (`torch._foreach_lerp_` on DTensors) averages each rank's own shard with no
communication. Under DDP or on one device (no device mesh) nothing here does anything.

Activation checkpointing is the model's own switch (`model.overrides.activation_checkpointing`,
see `models.dit.DiT`); it composes with the sharding here: FSDP2's forward hook recognises a
block's recomputation in backward and uses the weights its backward hook gathered. Two CPU ranks
with it on reproduce a DDP run without it (tests/test_distributed.py).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from pippo_lightning.stages.config import ConfigError, coerce

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from pippo_lightning.models.pippo import Pippo

log = logging.getLogger(__name__)

#: dtype names accepted in configs (YAML has no torch dtypes)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ShardingConfig:
    """How FSDP2 shards a stage (`stage.sharding` in the config); used only with a device mesh."""

    #: dtype the gathered weights are computed in; null keeps fp32 compute
    param_dtype: str | None = "bfloat16"
    #: dtype gradients are averaged in; fp32 keeps the reduce exact whatever param_dtype is
    reduce_dtype: str | None = "float32"
    #: free each block's gathered weights after its forward and gather again in backward:
    #: memory of one block's full weights instead of all of them, for one more all-gather
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ConfigError(
                    f"stage.sharding.{name} must be one of {sorted(DTYPES)} or null, got {value!r}"
                )

    def mixed_precision(self) -> MixedPrecisionPolicy:
        """FSDP2's policy: gathered weights in `param_dtype`, gradients reduced in `reduce_dtype`;
        the sharded fp32 weights the optimizer steps on are never rounded."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype] if self.param_dtype else None,
            reduce_dtype=DTYPES[self.reduce_dtype] if self.reduce_dtype else None,
        )


class FullyShardedStrategy(ModelParallelStrategy):
    """`ModelParallelStrategy` as pure FSDP2: one data-parallel mesh dimension over every rank.

    Lightning's "auto" sizes give a (nodes x GPUs-per-node) mesh meant for tensor parallelism;
    sharding over only its data-parallel dimension would leave the GPUs of a node unsynchronised.
    Here the tensor-parallel size is 1 and the data-parallel size is the world size, whatever
    `trainer.devices` and `trainer.num_nodes` are.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )

    def setup_environment(self) -> None:
        # num_nodes and the per-node devices are known here, before the mesh is built
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        """A sharded checkpoint is written whole into a temporary sibling directory, then renamed
        over `filepath`: Lightning writes into the existing directory in place, so a crash
        mid-save would leave the previous `.metadata` next to half-new shards."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        from pippo_lightning.checkpoints.atomic import replace_directory

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0 and tmp.exists():
            shutil.rmtree(tmp)  # left by a crash: never a checkpoint (no .ckpt name)
        self.barrier("pippo-sharded-checkpoint-start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("pippo-sharded-checkpoint-written")  # every shard, .metadata and meta.pt
        if self.global_rank == 0:
            replace_directory(tmp, path)
        self.barrier("pippo-sharded-checkpoint-renamed")


def sharding_config(stage: LightningModule) -> ShardingConfig:
    """The stage's `sharding` hyperparameter as a checked `ShardingConfig`."""
    return coerce(ShardingConfig, stage.hparams.get("sharding"), "stage.sharding")


def data_parallel_mesh(stage: LightningModule) -> DeviceMesh | None:
    """The mesh to shard over, or None when the strategy provides none (DDP, one device)."""
    try:
        mesh = stage.device_mesh
    except AttributeError:  # Lightning versions without device meshes
        return None
    if mesh is None:
        return None
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigError(
            "Pippo stages shard with FSDP2 only (no tensor parallelism): use "
            "pippo_lightning.stages.sharding.FullyShardedStrategy or "
            "ModelParallelStrategy(tensor_parallel_size=1)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def sharding_units(model: Pippo) -> Iterator[nn.Module]:
    """The modules that gather and free their weights as one unit, innermost first.

    One unit per DiT block bounds the gathered weights to about one block; ControlMLP and the
    camera MLP are their own units (run once per step, before the blocks). Whatever remains
    (patchify, embeddings, reference encoder, output layer, nulls) goes with the root.
    """
    yield from model.generator.blocks
    for name in ("control_mlp", "camera_mlp"):
        module = getattr(model, name, None)
        if module is not None:
            yield module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_model(model: Pippo, mesh: DeviceMesh, config: ShardingConfig, root: bool = True) -> None:
    """Apply `fully_shard` to every unit of `model`, then its root; already sharded ones are
    skipped, so calling this again (configure_model runs per fit/validate) changes nothing."""
    from torch.distributed.fsdp import fully_shard

    options: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": config.mixed_precision(),
        "reshard_after_forward": config.reshard_after_forward,
    }
    for unit in sharding_units(model):
        if not is_sharded(unit):
            fully_shard(unit, **options)
    if root and not is_sharded(model):
        fully_shard(model, **options)


def configure_sharding(stage: LightningModule) -> bool:
    """Shard the stage's model and EMA shadow over the device mesh; True when it sharded.

    Called from `PippoStage.configure_model`. Without a mesh (DDP, one device) it only checks
    the config, so a typo in `stage.sharding` fails on a laptop too.
    """
    config = sharding_config(stage)
    mesh = data_parallel_mesh(stage)
    if mesh is None:
        return False
    shard_model(stage.model, mesh, config)
    if stage.ema is not None:
        # built as a copy of the unsharded model, so identical sharding lines up the shards
        shard_model(stage.ema.shadow, mesh, config)
    log.info(
        "FSDP2 over %d ranks: %d units + root, compute %s, gradient reduce %s, "
        "activation checkpointing %s",
        mesh.size(),
        sum(1 for _ in sharding_units(stage.model)),
        config.param_dtype or "float32",
        config.reduce_dtype or "float32",
        "on" if getattr(stage.model.generator, "activation_checkpointing", False) else "off",
    )
    return True


def gradient_norm(parameters: Iterable[nn.Parameter]) -> Tensor | None:
    """L2 norm of all gradients, the same value on every rank; None when there are none.

    Sharded gradients are DTensors whose norm is a partial sum per rank: a plain `.norm()` of
    one would log this rank's part, and `self.log(..., sync_dist=True)` cannot all-reduce a
    DTensor. `full_tensor()` reduces it once. Under DDP the gradients are already averaged.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def consolidate_checkpoint(
    folder: str | Path, output: str | Path, include_optimizer: bool = True
) -> Path:
    """Turn a sharded checkpoint directory into one ordinary Lightning `.ckpt` file.

    `load_from_checkpoint`, pippo-eval and pippo-generate read single files; Lightning's own
    `consolidate_checkpoint` tool expects FSDP1's layout ("model" key) and fails on
    ModelParallelStrategy's ("state_dict", "optimizer_<i>"). The whole checkpoint is read
    into CPU memory. `include_optimizer=False` keeps weights, EMA and metadata only.
    """
    # Lightning's reader of distributed checkpoints (private, but it also merges meta.pt)
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} is not a sharded checkpoint directory (no .metadata)")
    checkpoint = _load_distributed_checkpoint(folder)
    keys = sorted(
        (k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k[10:])
    )
    optimizer_states = [checkpoint.pop(k) for k in keys]
    if include_optimizer:
        checkpoint["optimizer_states"] = optimizer_states
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, output)
    return output
