"""Safe loading: every torch file pippo reads goes through `load_torch_file`.

Stage checkpoints, original weights, Hub files, metric weights and tensors inside data samples
are all loaded with `torch.load(weights_only=True)` and a short allow-list of plain classes, so a
pickle that needs code to unpickle is refused with an `UnsafeCheckpointError` before any of it
runs. Pure torch (no Lightning): the metrics load their matcher weights through it too.
"""

from __future__ import annotations

import pathlib
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from pippo_lightning.diffusion.ddim import DDIMConfig
from pippo_lightning.diffusion.schedules import ScheduleConfig
from pippo_lightning.errors import PippoError


class CorruptCheckpointError(PippoError):
    """A checkpoint file that is truncated, damaged or not a Lightning checkpoint."""


class UnsafeCheckpointError(PippoError):
    """A file holding pickled objects that need code to unpickle; it was refused unrun."""


#: What to do about a refused file, unless the caller knows better (e.g. an opt-in flag).
TRUSTED_SOURCES_ADVICE = (
    "load only checkpoints saved with plain data (pippo-train, pippo-convert and pippo-hub "
    "write such files), or share weights as safetensors (pippo-hub push / pull)"
)


# ------------------------------------------------------------------------- safe loading
#: Classes besides tensors and plain data that a checkpoint may legitimately hold: filesystem
#: paths (a `Path` passed as a hyperparameter, or kept in a callback's state) and config
#: dataclasses (hyperparameters of a stage built from Python objects). Each is rebuilt from its
#: fields alone: none lets a file choose code to run. OmegaConf containers are deliberately
#: absent: the stages turn them into dicts before they reach a checkpoint.
_SAFE_GLOBALS: list[type] = [
    pathlib.PurePosixPath,
    pathlib.PosixPath,
    pathlib.PureWindowsPath,
    pathlib.WindowsPath,
    ScheduleConfig,
    DDIMConfig,
]


def register_safe_globals(*classes: type) -> None:
    """Allow plain config dataclasses in checkpoints. Called by the modules that define them
    (the stages' configs), which sit above this one: the format does not import its users."""
    for cls in classes:
        if cls not in _SAFE_GLOBALS:
            _SAFE_GLOBALS.append(cls)


def checkpoint_safe_globals() -> list[type]:
    """The classes a weights-only load accepts besides tensors and plain data."""
    return list(_SAFE_GLOBALS)


@contextmanager
def allowed_checkpoint_globals() -> Iterator[None]:
    """`checkpoint_safe_globals` allowed for every weights-only load inside the block, e.g.
    Lightning's own loads in `Trainer.fit(ckpt_path=..., weights_only=True)`."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def load_torch_file(
    source: str | Path | IO[bytes],
    map_location: Any = "cpu",
    mmap: bool = False,
    advice: str = TRUSTED_SOURCES_ADVICE,
) -> Any:
    """What `torch.save` wrote to `source`, unpickled weights-only: tensors, plain data and
    `checkpoint_safe_globals`.

    torch's restricted unpickler stops at the first global it does not allow, before calling
    anything, so a malicious `__reduce__` never runs; that is an `UnsafeCheckpointError` naming
    the file and ending with `advice` (what to do). `mmap` memory-maps the tensors where the
    file format allows (not for legacy, non-zip files, which are read whole). Other failures
    (a damaged file, no such file) are raised as torch raises them, for the caller to word.
    """
    is_path = isinstance(source, (str, Path))
    name = source if is_path else getattr(source, "name", "<bytes>")
    mmap = mmap and is_path and zipfile.is_zipfile(source)  # legacy files cannot be mapped
    with allowed_checkpoint_globals():
        try:
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise refusal(name, err, advice) from err


def refusal(
    path: str | Path,
    error: BaseException,
    advice: str = TRUSTED_SOURCES_ADVICE,
    kind: str = "checkpoint",
) -> PippoError:
    """The error for a pickle that weights-only loading rejected (`kind`: what the file was
    expected to be, for the message).

    torch names the global it refused ("Unsupported global: GLOBAL builtins.exec"): that file
    needs code to unpickle. Anything else it cannot parse (text, other pickle opcodes) is
    unreadable; either way nothing in it was executed.
    """
    found = re.search(r"Unsupported global:\s*(?:GLOBAL\s+)?([\w.]+)", str(error))
    if found:
        return UnsafeCheckpointError(
            f"refused to load {path}: it holds pickled objects that need code to unpickle "
            f"({found.group(1)}), and such a file would run code when loaded; nothing in it "
            f"was run. Only tensors and plain data are accepted: {advice}"
        )
    return CorruptCheckpointError(
        f"{path} is not a readable {kind} (UnpicklingError: not a pickle that weights-only "
        "loading accepts; nothing in it was run)"
    )
