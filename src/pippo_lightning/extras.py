"""Optional packages: which extra of pippo_lightning brings each, and one clear error if absent.

The core install (torch, lightning, hydra, ...) trains and samples on the embedded demo. Every
other package belongs to an extra named in pyproject.toml; code that needs one calls
:func:`require` at the point of use, so a missing package is one line naming the extra to install
instead of a bare ``ModuleNotFoundError`` from deep inside a library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pippo_lightning.errors import PippoError

#: import name -> (distribution on PyPI, extra of pippo_lightning that installs it)
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "wandb": ("wandb", "wandb"),
    "huggingface_hub": ("huggingface_hub", "hub"),
    "cv2": ("opencv-python-headless", "metrics"),
    "kornia": ("kornia", "metrics"),
    "scipy": ("scipy", "metrics"),
    "transformers": ("transformers", "encoders"),
    "imageio_ffmpeg": ("imageio-ffmpeg", "video"),
    "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "slurm"),
    "hydra_plugins.hydra_optuna_sweeper": ("hydra-optuna-sweeper", "sweep"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "matplotlib": ("matplotlib", "plots"),
    "skimage": ("scikit-image", "photo"),
    "rembg": ("rembg", "background"),
    "onnxruntime": ("onnxruntime", "background"),
}


class MissingExtraError(PippoError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def install_hint(module: str) -> str:
    """`pip install 'pippo_lightning[<extra>]'` for an optional module."""
    distribution, extra = OPTIONAL_MODULES[module]
    return (
        f"pip install 'pippo_lightning[{extra}]' (or `pip install {distribution}`; "
        "`make install` installs every extra)"
    )


def missing_extra_message(module: str, purpose: str) -> str:
    distribution, _ = OPTIONAL_MODULES[module]
    return f"{purpose} needs {distribution}, which is not installed: {install_hint(module)}"


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional module, or raise :class:`MissingExtraError` naming its extra.

    ``purpose`` says what needs it ("logger=wandb", "the LightGlue matcher"), so that the one
    line the CLI prints tells the user both why and what to install.
    """
    if module not in OPTIONAL_MODULES:
        raise KeyError(f"{module!r} is not a known optional module; add it to OPTIONAL_MODULES")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        # only the module itself (or its top package) being absent is a missing extra; an
        # ImportError from inside an installed package is a real bug and is kept as it is
        missing = getattr(err, "name", None)
        if missing is not None and not (module == missing or module.startswith(f"{missing}.")):
            raise
        raise MissingExtraError(missing_extra_message(module, purpose)) from err


def available(module: str) -> bool:
    """True when an optional module can be imported (no error, for choosing a fallback)."""
    try:
        require(module, "")
    except MissingExtraError:
        return False
    return True
