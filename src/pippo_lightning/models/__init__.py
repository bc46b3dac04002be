"""Pippo model code in pure torch.nn: DiT generator, reference encoder, camera MLP, ControlMLP."""

from pippo_lightning.models.camera import CameraMLP
from pippo_lightning.models.control import ControlMLP
from pippo_lightning.models.dit import DiT, DiTBlock
from pippo_lightning.models.original_keys import (
    OriginalCheckpointError,
    config_from_original,
    convert_original_state_dict,
    to_original_state_dict,
)
from pippo_lightning.models.pippo import (
    MODEL_SIZES,
    Pippo,
    PippoConfig,
    count_parameters,
    pippo_config,
)
from pippo_lightning.models.reference import ReferenceEncoder

__all__ = [
    "MODEL_SIZES",
    "CameraMLP",
    "ControlMLP",
    "DiT",
    "DiTBlock",
    "OriginalCheckpointError",
    "Pippo",
    "PippoConfig",
    "ReferenceEncoder",
    "config_from_original",
    "convert_original_state_dict",
    "count_parameters",
    "pippo_config",
    "to_original_state_dict",
]
