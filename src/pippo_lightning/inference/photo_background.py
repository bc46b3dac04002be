"""Optional background removal for `pippo-generate`'s photo: cut the person out with rembg and
put them on the studio backdrop the model was trained on (``background.remove=true``).

The segmentation network is a U²-Net-style ONNX file (``u2net_human_seg.onnx``, ``u2net.onnx``,
``u2netp.onnx``, ``silueta.onnx``: input [1, 3, 320, 320], first output's channel 0 the mask)
read from ``background.model_path``, like every other weight: nothing is downloaded. rembg's
named sessions fetch their models from the internet on first use, and its ``u2net_custom``
session accepts only files under ``~/.rembg``; :func:`load_segmenter` therefore builds that
session's predictor around the given file directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.errors import ConfigError, PippoError
from pippo_lightning.extras import require
from pippo_lightning.inference.photo import STUDIO_BACKGROUND, read_photo

#: where the U²-Net human segmentation weights are published (for the error message only)
U2NET_HUMAN_SEG_URL = (
    "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net_human_seg.onnx"
)


class SegmentationWeightsError(PippoError, FileNotFoundError):
    """``background.remove=true`` without a readable local segmentation model."""


@dataclass(frozen=True)
class BackgroundSettings:
    """`pippo-generate`'s ``background`` node: the backdrop colour (RGB in [0, 1]) behind
    transparent pixels, crop margins and removed background; whether to remove the photo's
    own background, and the local ONNX segmentation model that does it."""

    color: tuple[float, float, float] = STUDIO_BACKGROUND
    remove: bool = False
    model_path: Path | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | Sequence[float] | None) -> BackgroundSettings:
        if node is None:
            return cls()
        if not isinstance(node, Mapping):
            raise ConfigError(
                f"background must be a mapping (color, remove, model_path), got {list(node)}; "
                "the backdrop colour is background.color=[r,g,b]"
            )
        unknown = sorted(set(node) - {"color", "remove", "model_path"})
        if unknown:
            raise ConfigError(
                f"background: unknown key(s) {unknown}; expected color, remove, model_path"
            )
        color = tuple(float(c) for c in node.get("color", STUDIO_BACKGROUND))
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ConfigError(f"background.color must be 3 numbers in [0, 1], got {list(color)}")
        remove = node.get("remove", False)
        if not isinstance(remove, bool):
            raise ConfigError(f"background.remove must be true or false, got {remove!r}")
        model_path = node.get("model_path")
        return cls(color, remove, None if model_path in (None, "") else Path(str(model_path)))  # type: ignore[arg-type]


def check_model_path(settings: BackgroundSettings) -> Path:
    """The segmentation model file, or one error naming the key, the file and where to get it."""
    hint = (
        "a U²-Net ONNX segmentation model on this machine, e.g. u2net_human_seg.onnx "
        f"({U2NET_HUMAN_SEG_URL}); pippo_lightning never downloads it"
    )
    if settings.model_path is None:
        raise SegmentationWeightsError(
            f"background.remove=true needs background.model_path: {hint}"
        )
    if not settings.model_path.is_file():
        raise SegmentationWeightsError(
            f"background.model_path={settings.model_path} does not exist: expected {hint}"
        )
    return settings.model_path


def load_segmenter(model_path: Path) -> Any:
    """rembg's U²-Net session around the local ONNX file ``model_path`` (never downloads)."""
    require("rembg", "background.remove=true")
    require("onnxruntime", "background.remove=true")
    import onnxruntime
    from rembg.sessions.u2net_custom import U2netCustomSession

    class LocalU2netSession(U2netCustomSession):
        # rembg resolves the model through download_models(), which for u2net_custom refuses
        # paths outside ~/.rembg; the file was already checked by check_model_path
        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            return str(kwargs["model_path"])

    try:
        return LocalU2netSession(
            "u2net_custom", onnxruntime.SessionOptions(), model_path=str(model_path)
        )
    except Exception as err:  # onnxruntime raises its own types for a file it cannot load
        raise SegmentationWeightsError(
            f"background.model_path={model_path} is not a loadable ONNX model: {err}"
        ) from err


def person_mask(photo: Tensor, segmenter: Any) -> Tensor:
    """The person's coverage [H, W] in [0, 1] for photo [3, H, W] (0-255)."""
    from PIL import Image
    from rembg import remove

    pixels = photo.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, 3]
    mask = remove(Image.fromarray(pixels), session=segmenter, only_mask=True)  # "L", H x W
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)


def composite_on_backdrop(photo: Tensor, mask: Tensor, color: Sequence[float]) -> Tensor:
    """photo [3, H, W] (0-255) kept where mask [H, W] is 1, ``color`` where it is 0."""
    backdrop = torch.tensor(list(color), dtype=photo.dtype).reshape(3, 1, 1) * 255.0
    alpha = mask.to(photo.dtype)[None]  # [1, H, W]
    return photo * alpha + backdrop * (1.0 - alpha)


def photo_for_config(cfg: Mapping[str, Any], path: str | Path) -> Tensor:
    """`pippo-generate`'s photo [3, H, W] (0-255): read onto ``background.color``, and with
    ``background.remove=true`` its background replaced by that colour. The model file is
    checked first, so a wrong path fails before anything slow."""
    settings = BackgroundSettings.from_config(cfg.get("background"))
    model_path = check_model_path(settings) if settings.remove else None
    photo = read_photo(path, settings.color)
    if model_path is None:
        return photo
    return composite_on_backdrop(
        photo, person_mask(photo, load_segmenter(model_path)), settings.color
    )
