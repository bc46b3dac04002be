"""The SDXL VAE (diffusers ``AutoencoderKL``) as a frozen first stage.

Nothing is downloaded unless ``allow_download=True``: by default the weights must be a local
directory or already sit in the Hugging Face cache, and anything else fails fast with
``CompressorLoadError`` saying what to set.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pippo_lightning.compressors.base import Compressor, CompressorLoadError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

DEFAULT_PRETRAINED = "stabilityai/sdxl-vae"
# SDXL's latent scale: brings the VAE's posterior means to roughly unit variance.
SDXL_SCALE_FACTOR = 0.13025
# Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper) is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# Values read from each weight tensor for the identity key: enough to tell fine-tunes apart
# (they change every weight) without hashing the whole 300 MB.
_DIGEST_SAMPLES = 1024


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or its config spelling ("bf16", "float16", ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[dtype]


def _local_dir(pretrained: str) -> Path | None:
    """The directory to load from, None for a hub id; raises if a path is named but missing."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(pretrained):
        raise CompressorLoadError(
            f"VAE weights not found: '{pretrained}' is not a directory. Set "
            "compressor.pretrained to a local directory holding an AutoencoderKL "
            "(config.json + weights) or to a Hugging Face hub id."
        )
    return None


def load_autoencoder(
    pretrained: str,
    subfolder: str | None = None,
    allow_download: bool = False,
    dtype: torch.dtype | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> AutoencoderKL:
    """Load an ``AutoencoderKL`` from a local dir or the hub cache, or raise CompressorLoadError."""
    from diffusers import AutoencoderKL  # deferred: importing diffusers costs seconds

    local = _local_dir(pretrained)
    try:
        return AutoencoderKL.from_pretrained(
            str(local) if local is not None else pretrained,
            subfolder=subfolder,
            local_files_only=not allow_download,
            torch_dtype=dtype,
            cache_dir=cache_dir,
            revision=revision,
            low_cpu_mem_usage=False,  # the accelerate fast path is optional; skip its warning
        )
    except (OSError, ValueError) as err:
        where = f"'{pretrained}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
        if local is not None:
            advice = "check that it holds an AutoencoderKL saved with save_pretrained"
        elif allow_download:
            advice = "the download failed; check the id, the network and HF_HUB_OFFLINE"
        else:
            advice = (
                "it is not in the local Hugging Face cache and downloads are off; set "
                "compressor.pretrained to a local directory or compressor.allow_download=true"
            )
        raise CompressorLoadError(f"Could not load VAE weights from {where}: {advice}.") from err


def weights_digest(module: torch.nn.Module) -> str:
    """A short content hash of a module's weights (names, shapes, dtypes, sampled values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        stride = max(flat.numel() // _DIGEST_SAMPLES, 1)
        sample = flat[::stride].to("cpu", torch.float64)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _geometry(block_out_channels: list[int], latent_channels: int) -> tuple[int, int]:
    """(downsample factor, latent channels) of an AutoencoderKL config: one 2x downsampling
    per block after the first."""
    return 2 ** (len(block_out_channels) - 1), int(latent_channels)


class SDXLVAECompressor(Compressor):
    """Frozen SDXL ``AutoencoderKL``: images [..., 3, H, W] <-> scaled latents [..., 4, H/8, W/8].

    ``scale_factor`` None reads the checkpoint's ``scaling_factor``. ``sample_posterior`` draws
    z ~ q(z|x) (from the generator `encode` is given: in training, the stage's stream; else the
    global one) instead of taking the posterior mean. ``dtype`` runs the VAE in that
    precision (note: the original SDXL VAE overflows in fp16; use bf16 or an fp16-fixed VAE).
    The latent size comes from the loaded config: one 2× downsampling per block after the first.
    """

    @classmethod
    def latent_geometry(
        cls, pretrained: str = DEFAULT_PRETRAINED, subfolder: str | None = None, **settings: Any
    ) -> tuple[int, int] | None:
        """From a local directory's config.json (as loading computes it); None for a hub id or
        an unreadable config: the loader reports those when it runs."""
        path = Path(pretrained).expanduser() / (subfolder or "") / "config.json"
        try:
            config = json.loads(path.read_text())
            return _geometry(config["block_out_channels"], config["latent_channels"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def __init__(
        self,
        pretrained: str = DEFAULT_PRETRAINED,
        subfolder: str | None = None,
        scale_factor: float | None = SDXL_SCALE_FACTOR,
        shift_factor: float = 0.0,
        sample_posterior: bool = False,
        dtype: torch.dtype | str | None = None,
        chunk_size: int | None = 8,
        allow_download: bool = False,
        cache_dir: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(chunk_size=chunk_size)
        self.vae = load_autoencoder(
            pretrained, subfolder, allow_download, resolve_dtype(dtype), cache_dir, revision
        )
        config = self.vae.config
        self.downsample_factor, self.latent_channels = _geometry(
            config.block_out_channels, config.latent_channels
        )
        self.scale_factor = float(config.scaling_factor if scale_factor is None else scale_factor)
        self.shift_factor = float(shift_factor)
        self.sample_posterior = sample_posterior
        self.freeze()

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def release_encoder(self) -> None:
        # the identity names the weights by content: fix it before half of them go
        self._identity = self.identity_key()
        self.vae.encoder = None
        self.vae.quant_conv = None

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.sample_posterior

    def _encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.vae.encoder is None:
            raise RuntimeError(
                "SDXLVAECompressor.encode: the encoder was released (training from a latent "
                "cache); build a new compressor to encode images"
            )
        posterior = self.vae.encode(images.to(self.dtype)).latent_dist
        z = (
            posterior.sample(generator) if self.sample_posterior else posterior.mode()
        )  # [N, C, h, w]
        return ((z - self.shift_factor) * self.scale_factor).to(images.dtype)

    def _decode(self, latents: Tensor) -> Tensor:
        z = latents / self.scale_factor + self.shift_factor
        images = self.vae.decode(z.to(self.dtype)).sample  # [N, 3, H, W]
        # The decoder overshoots [-1, 1] slightly; consumers (metrics, video writers) rely on it.
        return images.clamp(-1.0, 1.0).to(latents.dtype)

    def identity_key(self) -> str:
        """Names the weights by content, not path, so copies of one VAE share a latent cache.

        Recomputed on each call (milliseconds) so a later dtype cast is reflected.
        """
        if getattr(self, "_identity", None) is not None:
            return self._identity
        mode = "sample" if self.sample_posterior else "mean"
        return (
            f"sdxl_vae-{weights_digest(self.vae)}-scale{self.scale_factor:g}"
            f"-shift{self.shift_factor:g}-{mode}"
        )

    def extra_repr(self) -> str:
        return (
            f"latent_channels={self.latent_channels}, downsample_factor={self.downsample_factor}, "
            f"scale_factor={self.scale_factor:g}, sample_posterior={self.sample_posterior}"
        )
