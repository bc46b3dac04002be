"""First stages: frozen maps between images and the diffusion model's space."""

from pippo_lightning.compressors.base import Compressor, CompressorLoadError
from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.compressors.sdxl_vae import SDXLVAECompressor

__all__ = ["Compressor", "CompressorLoadError", "IdentityCompressor", "SDXLVAECompressor"]
