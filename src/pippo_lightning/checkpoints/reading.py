"""Reading a stage checkpoint's parts: the whole dict (weights-only), the network's weights,
its metadata, the run config beside it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.errors import PippoError

log = logging.getLogger(__name__)


Weights = Literal["ema", "raw"]


#: Where each kind of weights sits in a stage's state_dict (see stages/base.py).
WEIGHT_PREFIXES: dict[str, str] = {"ema": "ema.shadow.", "raw": "model."}


# ------------------------------------------------------------------------- safe loading
def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict, loaded weights-only (checkpointing.load_torch_file): a pickle that
    needs code to unpickle is refused (UnsafeCheckpointError) before any of it runs."""
    path = Path(path)
    try:
        value = load_torch_file(path)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as error:
        raise PippoError(f"{path} is not a readable checkpoint ({type(error).__name__})") from error
    if not isinstance(value, dict):
        raise PippoError(f"{path} is not a checkpoint (holds a {type(value).__name__})")
    return value


# ----------------------------------------------------------------------- checkpoint export
def network_weights(
    checkpoint: Mapping[str, Any], weights: Weights
) -> tuple[dict[str, Tensor], str]:
    """The network's weights (``Pippo.state_dict()`` keys) of a Lightning checkpoint, and
    which ones they are. EMA falls back to the trained weights when the run kept no EMA."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise PippoError("not a Lightning checkpoint (no state_dict)")
    chosen = weights
    if weights == "ema" and not any(k.startswith(WEIGHT_PREFIXES["ema"]) for k in state):
        log.warning("checkpoint has no EMA weights (ema disabled); sharing the trained weights")
        chosen = "raw"
    prefix = WEIGHT_PREFIXES[chosen]
    # clone: safetensors refuses tensors that share storage or are not contiguous.
    tensors = {
        key[len(prefix) :]: value.detach().contiguous().clone()
        for key, value in state.items()
        if key.startswith(prefix) and isinstance(value, Tensor)
    }
    if not tensors:
        raise PippoError(f"checkpoint has no '{prefix}*' weights in its state_dict")
    return tensors, chosen


def run_config_path(checkpoint: str | Path) -> Path | None:
    """The run's resolved config: <run>/.hydra/config.yaml for <run>/checkpoints/x.ckpt, or
    a .hydra/ right beside the checkpoint (a pulled checkpoint's own layout)."""
    checkpoint = Path(checkpoint).resolve()
    for root in (checkpoint.parent, checkpoint.parent.parent):
        candidate = root / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


#: The checkpoint entry naming the stage class that saved it ("package.module.Class").
STAGE_CLASS_KEY = "pippo_stage_class"


def checkpoint_metadata(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's top-level entries, memory-mapped (only the small metadata is actually
    read); None when it cannot be read (load_stage explains why)."""
    try:
        state = load_torch_file(path, mmap=True)
    except (RuntimeError, OSError, EOFError, PippoError, zipfile.BadZipFile):
        return None
    return state if isinstance(state, dict) else None


def saved_stage_class(path: str | Path) -> str | None:
    """The stage class a checkpoint was saved by ("package.module.Class"); None when it does
    not say (written before the entry existed) or cannot be read."""
    saved = (checkpoint_metadata(path) or {}).get(STAGE_CLASS_KEY)
    return saved if isinstance(saved, str) else None


def checkpoint_step(path: str | Path) -> int | None:
    """The global step a Lightning checkpoint was saved at (None if it does not say)."""
    step = (checkpoint_metadata(path) or {}).get("global_step")
    return int(step) if step is not None else None
