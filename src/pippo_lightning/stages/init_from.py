"""Does a previous stage's checkpoint fit this stage's model (``init_from``)?

One check for both callers: :meth:`PippoStage.load_previous_stage` (with the loaded tensors)
and the training preflight (with shapes read memory-mapped, before anything is built for real).
A later stage may add modules at zero output (the chain P1 -> M2 -> P3 relies on it); every
other weight must be in the checkpoint with the same shape, and the checkpoint may hold nothing
the stage has no place for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pippo_lightning.stages.config import ConfigError

#: modules a stage adds at zero output: an init checkpoint from an earlier stage may lack them
ADDED_MODULES = ("ref_encoder", "camera_mlp", "control_mlp", "global_embedding")
#: where a stage checkpoint keeps the model's weights, preferred first (the EMA where present)
WEIGHT_PREFIXES = ("ema.shadow.", "model.")

Shapes = Mapping[str, tuple[int, ...]]


def model_weights(checkpoint: Any, path: str) -> dict[str, Tensor]:
    """The model's weights in a loaded stage checkpoint (the EMA where present), keys relative
    to the model; ConfigError naming ``path`` when it holds none."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    for prefix in WEIGHT_PREFIXES:
        weights = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and isinstance(v, Tensor)
        }
        if weights:
            return weights
    raise ConfigError(
        f"stage.init_from={path}: no 'model.*' or 'ema.shadow.*' weights in its state_dict"
    )


def may_be_absent(key: str, source_modules: set[str]) -> bool:
    """Whether an init checkpoint may lack weight ``key`` of the stage's model: a module the
    stage adds, when the checkpoint has none of it (a module it has must come whole)."""
    module = key.split(".")[0]
    if module == "null":
        return True  # learned null conditions: independent vectors, each starting at zero
    return module in ADDED_MODULES and module not in source_modules


def shorten(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (
        f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    )


def fit_problems(source: Shapes, own: Shapes) -> list[str]:
    """What keeps checkpoint weights ``source`` from initialising a model of weights ``own``
    (names -> shapes); empty when it fits."""
    source_modules = {k.split(".")[0] for k in source}
    missing = [k for k in sorted(set(own) - set(source)) if not may_be_absent(k, source_modules)]
    unexpected = sorted(set(source) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(source[k])} vs stage {tuple(own[k])}"
        for k in sorted(set(source) & set(own))
        if tuple(source[k]) != tuple(own[k])
    ]
    return [
        f"{what} ({len(keys)}): {shorten(keys)}"
        for what, keys in (
            ("missing from the checkpoint", missing),
            ("shape mismatches", mismatched),
            ("weights the stage lacks", unexpected),
        )
        if keys
    ]


def misfit_message(path: str, problems: list[str], model: str) -> str:
    """One message for a checkpoint that does not fit, naming the file and every kind of misfit."""
    return (
        f"stage.init_from={path}: the checkpoint does not fit the {model}: "
        f"{'; '.join(problems)}. Expected a checkpoint of the same model size, image size, "
        "compressor and image encoder; only the modules a later stage adds (reference "
        "encoder, camera MLP, ControlMLP, global embedding) may be absent"
    )
