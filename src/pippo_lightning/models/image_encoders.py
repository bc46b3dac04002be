"""Frozen global image encoders: the P1 condition (DINOv2 in the paper) and an offline default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require
from pippo_lightning.models.frozen import keep_out_of_checkpoints

# DINOv2 was trained on ImageNet-normalised inputs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderLoadError(PippoError):
    """Image-encoder weights could not be loaded (missing path, hub id not cached offline)."""


class ImageEncoder(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> embeddings [B, embedding_dim]; frozen, eval mode."""

    embedding_dim: int

    @classmethod
    def embedding_dim_of(cls, **settings: Any) -> int | None:
        """``embedding_dim`` of an encoder built with ``settings`` (its constructor's
        arguments), known without loading weights; None where only loading tells."""
        return None

    def freeze(self) -> None:
        """Frozen and, like the compressor, kept out of the stage's checkpoints."""
        self.requires_grad_(False)
        self.eval()
        keep_out_of_checkpoints(self)

    def train(self, mode: bool = True) -> ImageEncoder:
        # frozen encoders never leave inference mode (no dropout, fixed norms)
        return super().train(False)


class ThumbnailEncoder(ImageEncoder):
    """The colour layout of the image at `size` x `size` (area-averaged), flattened.

    Needs no weights, so pre-training runs offline by default; a weak but honest global
    condition (who wears what colour where) until DINOv2 weights are configured.
    """

    @classmethod
    def embedding_dim_of(cls, size: int = 8, **settings: Any) -> int:
        return 3 * size * size

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"ThumbnailEncoder size must be >= 1, got {size}")
        self.size = size
        self.embedding_dim = self.embedding_dim_of(size)
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        thumbs = F.adaptive_avg_pool2d(images.float(), self.size)  # [B, 3, s, s]
        return thumbs.flatten(1)


class DINOv2Encoder(ImageEncoder):
    """DINOv2 through `transformers` (`AutoModel.from_pretrained`); the CLS token after the
    final norm is the embedding (1024-d for ViT-L/14, the paper's choice).

    `pretrained` is a local directory or a hub id; nothing is downloaded unless
    `allow_download` is set (a hub id must otherwise already be in the local cache).
    """

    def __init__(
        self,
        pretrained: str = "facebook/dinov2-large",
        image_size: int = 224,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        require("transformers", "the DINOv2 image encoder")
        from transformers import AutoModel

        local = Path(pretrained).expanduser()
        if (pretrained.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
            raise EncoderLoadError(
                f"DINOv2 weights not found at {pretrained!r}: expected a directory written by "
                "save_pretrained (config.json + weights)"
            )
        try:
            self.model = AutoModel.from_pretrained(
                str(local) if local.is_dir() else pretrained,
                local_files_only=not allow_download,
            )
        except (OSError, ValueError) as err:
            raise EncoderLoadError(
                f"could not load DINOv2 weights from {pretrained!r}: not a local directory and "
                "not in the Hugging Face cache (downloads are off); set "
                "stage.image_encoder.pretrained to a local directory or "
                "stage.image_encoder.allow_download=true"
            ) from err
        patch = int(self.model.config.patch_size)
        if image_size % patch:
            raise ValueError(
                f"image_size={image_size} must be a multiple of the patch size {patch}"
            )
        self.image_size = image_size
        self.embedding_dim = int(self.model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        pixels = (images.float() + 1) / 2
        pixels = F.interpolate(
            pixels, size=(self.image_size, self.image_size), mode="bicubic", antialias=True
        )
        pixels = (pixels - self.mean) / self.std
        return self.model(pixel_values=pixels).pooler_output  # [B, hidden]
