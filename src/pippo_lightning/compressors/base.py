"""The first stage: a frozen map between images and the space the diffusion model works in."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pippo_lightning.models.frozen import full_state_dict, keep_out_of_checkpoints

IMAGE_CHANNELS = 3


class CompressorLoadError(RuntimeError):
    """A compressor's weights could not be found or loaded; the message says what to change."""


class Compressor(nn.Module, ABC):
    """Frozen encoder/decoder between images [..., 3, H, W] in [-1, 1] and latents [..., C, h, w].

    Subclasses implement ``_encode`` / ``_decode`` on flat batches [N, ...]; this class adds
    arbitrary leading dims (e.g. [B, NV, ...]), chunking to bound peak memory, and freezing.
    Latents come out already scaled for diffusion (unit-ish variance).

    Frozen weights come from ``pretrained``, not from training, so they stay out of the host
    model's ``state_dict`` (no 300 MB VAE in every checkpoint) and strict loading of such a
    checkpoint keeps the weights already loaded.
    """

    latent_channels: int
    downsample_factor: int
    #: True when encoding draws random numbers (a sampled posterior): `encode` then hands its
    #: `generator` to `_encode`
    stochastic: bool = False

    @classmethod
    def latent_geometry(cls, **settings: Any) -> tuple[int, int] | None:
        """(downsample_factor, latent_channels) of a compressor built with ``settings`` (its
        constructor's arguments), known without loading any weights; None where only loading
        tells. Lets a run's config be checked (patch grid, init checkpoint shapes) up front."""
        return None

    def __init__(self, chunk_size: int | None = None) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: must be >= 1 or None")
        self.chunk_size = chunk_size
        keep_out_of_checkpoints(self)

    def full_state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Every parameter and persistent buffer, bypassing the checkpoint exclusion."""
        return full_state_dict(self, prefix)

    @abstractmethod
    def _encode(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] -> latents [N, C, H/f, W/f]."""

    @abstractmethod
    def _decode(self, latents: Tensor) -> Tensor:
        """latents [N, C, h, w] -> images [N, 3, h*f, w*f]."""

    @abstractmethod
    def identity_key(self) -> str:
        """A stable string naming this compressor and its weights (for latent caches)."""

    def freeze(self) -> None:
        """Stop gradients and fix eval mode; call at the end of a subclass's __init__."""
        self.requires_grad_(False)
        self.eval()

    def release_encoder(self) -> None:
        """Free the encoder's weights (training from a latent cache never encodes); encode()
        afterwards raises. Compressors without weights have nothing to free."""

    def train(self, mode: bool = True) -> Compressor:
        # Lightning calls .train() on the whole LightningModule each epoch; a frozen first stage
        # must not follow it into train mode (dropout, norm statistics).
        return super().train(False)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """images [..., 3, H, W] in [-1, 1] -> latents [..., C, H/f, W/f].

        `generator`: the random stream a compressor that samples (`stochastic`) draws from;
        deterministic compressors ignore it."""
        self._check_image(images)
        if self.stochastic and generator is not None:
            return self._chunked(functools.partial(self._encode, generator=generator), images)
        return self._chunked(self._encode, images)

    def decode(self, latents: Tensor) -> Tensor:
        """latents [..., C, h, w] -> images [..., 3, h*f, w*f] in [-1, 1]."""
        if latents.ndim < 4 or latents.shape[-3] != self.latent_channels:
            raise ValueError(
                f"{type(self).__name__}.decode expects latents [..., {self.latent_channels}, h, w]; "
                f"got {tuple(latents.shape)}"
            )
        return self._chunked(self._decode, latents)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents for an image of the given size."""
        f = self.downsample_factor
        return self.latent_channels, height // f, width // f

    def _check_image(self, images: Tensor) -> None:
        f = self.downsample_factor
        if images.ndim < 4 or images.shape[-3] != IMAGE_CHANNELS:
            raise ValueError(
                f"{type(self).__name__}.encode expects images [..., 3, H, W]; "
                f"got {tuple(images.shape)}"
            )
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(
                f"{type(self).__name__}: image size {tuple(images.shape[-2:])} is not divisible "
                f"by the downsample factor {f}"
            )

    def _chunked(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """Apply ``fn`` to x [..., C, H, W] flattened to [N, C, H, W], ``chunk_size`` rows at a time."""
        leading = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])  # [N, C, H, W]
        size = self.chunk_size or max(flat.shape[0], 1)
        out = torch.cat([fn(chunk) for chunk in flat.split(size)])
        return out.reshape(*leading, *out.shape[-3:])
