"""Classifier-free guidance over the conditions: which condition drops with which, and the masks.

Each condition the network reads belongs to one dropout group; a dropped group is replaced, per
sample, by the learned null value of each of its conditions (parameters of the network, so their
state-dict keys stay those of the original release):

| group     | conditions                                            | null value (state-dict key)  |
|-----------|-------------------------------------------------------|------------------------------|
| `ref`     | reference image (+ its camera, + face crop)           | `null.ref`                   |
|           | global image embedding (P1: the image's own)          | `null.global_embedding`      |
| `cameras` | target cameras (camera MLP)                           | `null.cam_pose`              |
| `control` | Plücker rays and spatial anchors (ControlMLP)         | `control_mlp.null_control`   |

Training draws the masks with :class:`ConditionDropout`'s probabilities
(:func:`sample_condition_drops`); validation drops nothing (:func:`no_drops`); guidance drops the
groups `sampling.uncond_drops` names in the unconditional half (:func:`guidance_drops`). The
network takes the masks as its `drop_*` arguments (:func:`network_drop_arguments`): one code path
for conditional and unconditional inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pippo_lightning.errors import ConfigError

#: The dropout groups, in the order the masks are drawn (changing it changes training noise).
CONDITIONS = ("ref", "cameras", "control")


@dataclass(frozen=True)
class ConditionDropout:
    """Classifier-free-guidance dropout: each condition is replaced by its null for a sample
    with its own probability, and `all` drops every condition of a sample together."""

    ref: float = 0.2
    cameras: float = 0.0
    control: float = 0.0
    all: float = 0.0

    def __post_init__(self) -> None:
        for name in (*CONDITIONS, "all"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"condition_dropout.{name} must be in [0, 1], got {p}")


def sample_condition_drops(
    dropout: ConditionDropout,
    batch_size: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-sample training masks bool [B] per group: each on its own, plus all together.

    Drawn from `generator` (the stage's training stream; the global one when None) on its
    device, then moved to `device`."""
    draw_device = generator.device if generator is not None else device

    def draw() -> Tensor:
        return torch.rand(batch_size, generator=generator, device=draw_device).to(device)

    drop_all = draw() < dropout.all
    return {name: drop_all | (draw() < getattr(dropout, name)) for name in CONDITIONS}


def no_drops(batch_size: int, device: torch.device | str) -> dict[str, Tensor]:
    """Masks that keep every condition (validation losses)."""
    return {name: torch.zeros(batch_size, dtype=torch.bool, device=device) for name in CONDITIONS}


def guidance_drops(uncond: Tensor, dropped: Sequence[str], batch_size: int) -> dict[str, Tensor]:
    """Masks for a guided sampler's stacked inputs: the groups in `dropped` follow `uncond`
    bool [times * B] (True in the unconditional rows), the others are kept everywhere."""
    keep = torch.zeros(uncond.shape[0], dtype=torch.bool, device=uncond.device)
    return {name: uncond if name in dropped else keep for name in CONDITIONS}


def network_drop_arguments(drops: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    """The network's `drop_*` arguments for the group masks: the global image embedding is the
    reference photo's description and drops with it."""
    return {
        "drop_ref": drops.get("ref"),
        "drop_cameras": drops.get("cameras"),
        "drop_control": drops.get("control"),
        "drop_global": drops.get("ref"),
    }
