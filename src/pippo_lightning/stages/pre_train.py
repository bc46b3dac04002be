"""P1 pre-training: single images conditioned on a global embedding of themselves."""

from __future__ import annotations

from typing import Any

from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.config import ConfigError


class PreTrainStage(PippoStage):
    """One view, no cameras, no reference tokens, no controls; the frozen image encoder's
    embedding of the image itself conditions every block (paper: DINOv2 ViT-L/14)."""

    use_cameras = False
    use_control = False
    use_reference = False
    embed_key = "images"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("image_encoder") is None:
            raise ConfigError(
                "stage p1 needs stage.image_encoder (e.g. the offline ThumbnailEncoder or DINOv2)"
            )
        if kwargs.get("num_views", 1) != 1:
            raise ConfigError(
                f"stage p1 trains single images: num_views must be 1, got {kwargs['num_views']}"
            )
        super().__init__(*args, **kwargs)
