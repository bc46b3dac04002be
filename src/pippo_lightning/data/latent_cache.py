"""Latent caches: every sample's views, reference and anchors encoded once by a compressor.

Training a latent-space stage re-encodes the same images with a frozen VAE every epoch; a cache
does it once (``pippo-data cache-latents``). Layout, next to the samples by default::

    <cache_root>/<compressor identity>-<resolution>px/
        manifest.json                  identity, resolution, latent shape, splits
        train/index.json, shard-*.safetensors   per sample: latents, ref_latent, anchor
        val/...                                  latents and ref_anchor_latent (all views)

A cache is keyed by ``Compressor.identity_key()`` and the resolution, and remembers the
fingerprint of the samples it encoded. One whose resolution or samples no longer match is
*stale*: it is reported and not used. The identity cannot be checked without the compressor, so
the stage compares :attr:`LatentCache.identity` with its own (see :func:`check_latent_identity`).

All views are cached (not a subset), so random view sampling works unchanged: the dataset picks
the rows of the views it chose. Latents are stored in float32 by default, so a cached batch equals
a freshly encoded one up to the compressor's own nondeterminism.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pippo_lightning.checkpoints.atomic import atomic_directory
from pippo_lightning.data.preparation import pixels_at, prepare_sample, sample_cameras
from pippo_lightning.data.shards import INDEX_FILE, ShardReader, ShardWriter
from pippo_lightning.data.sources import SampleSource, has_samples, open_source
from pippo_lightning.errors import PippoError
from pippo_lightning.progress import track

if TYPE_CHECKING:
    from pippo_lightning.compressors.base import Compressor

log = logging.getLogger(__name__)

CACHE_KIND = "pippo_lightning.latent_cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_CACHE_DIR = "latents"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class StaleCacheError(PippoError):
    """A latent cache does not match the samples, the resolution or the compressor."""


def cache_dir_name(identity: str, resolution: int) -> str:
    """Directory name of the cache for one compressor identity and resolution."""
    return f"{_UNSAFE.sub('_', identity)}-{resolution}px"


class LatentCache:
    """One split of a latent cache (a shard directory with extra index fields)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.reader = ShardReader(self.directory)
        info = self.reader.index
        if info.get("kind") != CACHE_KIND or info.get("cache_version") != CACHE_VERSION:
            raise StaleCacheError(
                f"{self.directory}: not a latent cache of version {CACHE_VERSION} "
                f"(kind {info.get('kind')!r}, version {info.get('cache_version')!r})"
            )
        self.identity: str = info["identity"]
        self.resolution: int = int(info["resolution"])
        self.source_fingerprint: str = info["source_fingerprint"]

    def __len__(self) -> int:
        return len(self.reader)

    def mismatch(self, source: SampleSource, resolution: int) -> str | None:
        """Why this cache cannot serve ``source`` at ``resolution`` (None: it can)."""
        if resolution != self.resolution:
            return f"encoded at {self.resolution} px, the data is served at {resolution} px"
        fingerprint = source.fingerprint()
        if fingerprint != self.source_fingerprint:
            return (
                f"the samples changed since caching (fingerprint {self.source_fingerprint}, "
                f"now {fingerprint}); rerun pippo-data cache-latents"
            )
        return None

    def check_matches(self, source: SampleSource, resolution: int) -> None:
        """Raise :class:`StaleCacheError` if this cache does not fit ``source`` / ``resolution``."""
        reason = self.mismatch(source, resolution)
        if reason is not None:
            raise StaleCacheError(f"stale latent cache {self.directory}: {reason}")

    def item(self, index: int, views: Tensor) -> dict[str, Tensor]:
        """Batch entries (see ``dataset.LATENT_KEYS``) for sample ``index`` and chosen ``views``."""
        entry = self.reader.read(index)
        anchors = torch.cat([entry["anchor_latents"][views], entry["ref_anchor_latent"]])
        return {
            "latents": entry["latents"][views].float(),  # [NV, C, h, w]
            "ref_latent": entry["ref_latent"].float(),  # [1, C, h, w]
            "anchor_latents": anchors.float(),  # [NV + 1, C, h, w], targets then reference
        }


def check_latent_identity(cache_identity: str | None, compressor: Compressor) -> None:
    """Raise if batches carry latents from another compressor than ``compressor``.

    For the stage: call with ``datamodule.latent_identity`` before training (None: no cache).
    """
    if cache_identity is None:
        return
    expected = compressor.identity_key()
    if cache_identity != expected:
        raise StaleCacheError(
            f"the latent cache was made with compressor {cache_identity!r} but the stage uses "
            f"{expected!r}; rerun pippo-data cache-latents with this compressor or drop "
            "data.latent_cache"
        )


def find_latent_cache(
    cache_root: str | Path,
    split: str,
    source: SampleSource,
    resolution: int,
    identity: str | None = None,
) -> LatentCache | None:
    """The valid cache of ``split`` under ``cache_root`` for this source and resolution.

    ``identity`` picks one compressor's cache; without it there must be at most one valid cache.
    Stale caches are logged (with the reason) and skipped.
    """
    cache_root = Path(cache_root)
    valid: list[LatentCache] = []
    for directory in sorted(cache_root.glob(f"*/{split}")):
        if not (directory / INDEX_FILE).is_file():
            continue
        try:
            cache = LatentCache(directory)
        except PippoError as error:
            log.warning("ignoring latent cache %s: %s", directory, error)
            continue
        if identity is not None and cache.identity != identity:
            continue
        reason = cache.mismatch(source, resolution)
        if reason is not None:
            log.warning("ignoring stale latent cache %s: %s", directory, reason)
            continue
        valid.append(cache)
    if len(valid) > 1:
        raise StaleCacheError(
            f"{cache_root}: several valid latent caches for {split!r} "
            f"({', '.join(c.identity for c in valid)}); set data.latent_cache_key to one"
        )
    return valid[0] if valid else None


def cache_latents(
    root: str | Path,
    compressor: Compressor,
    resolution: int,
    splits: Iterable[str] = ("train", "val"),
    cache_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    shard_size: int = 64,
    overwrite: bool = False,
) -> Path:
    """Encode every sample of ``root/<split>`` once; returns the cache directory.

    An up-to-date cache is reused (nothing is encoded); a stale one is replaced. The result is
    written atomically. ``dtype`` float16/bfloat16 halves the size at a small precision cost.
    """
    root = Path(root)
    if dtype not in _DTYPES:
        raise PippoError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    splits = [s for s in splits if (root / s).is_dir() and has_samples(root / s)]
    if not splits:
        raise FileNotFoundError(f"no samples under {root}/<split> (looked for train, val)")
    identity = compressor.identity_key()
    target = Path(cache_root or root / DEFAULT_CACHE_DIR) / cache_dir_name(identity, resolution)
    sources = {split: open_source(root / split) for split in splits}
    if not overwrite and _up_to_date(target, sources, resolution, identity):
        log.info("latent cache %s is up to date", target)
        return target
    compressor = compressor.to(device)
    with atomic_directory(target, overwrite=True) as staging:
        shapes = {}
        for split, source in sources.items():
            shapes[split] = _encode_split(
                source, compressor, resolution, staging / split, _DTYPES[dtype], shard_size
            )
            shapes[split]["fingerprint"] = source.fingerprint()
        manifest = {
            "kind": CACHE_KIND,
            "cache_version": CACHE_VERSION,
            "identity": identity,
            "resolution": resolution,
            "dtype": dtype,
            "data_root": str(root.resolve()),
            "splits": shapes,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def _up_to_date(
    target: Path, sources: dict[str, SampleSource], resolution: int, identity: str
) -> bool:
    for split, source in sources.items():
        try:
            cache = LatentCache(target / split)
        except PippoError:
            return False
        if cache.identity != identity or cache.mismatch(source, resolution) is not None:
            return False
    return True


def _module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's weights live (CPU for weightless ones such as the identity)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _encode_split(
    source: SampleSource,
    compressor: Compressor,
    resolution: int,
    out: Path,
    dtype: torch.dtype,
    shard_size: int,
) -> dict[str, Any]:
    """Encode one split into a shard directory at ``out``; returns the count and latent shape."""
    writer = ShardWriter(out, shard_size=shard_size, compact=False)
    device = _module_device(compressor)
    latent_shape: list[int] = []
    names = source.names()
    for index in track(range(len(source)), f"caching latents ({out.name})"):
        sample = prepare_sample(source.read(index), source.describe(index))
        cams = sample_cameras(sample)
        views = pixels_at(
            sample["image"][:, 0], sample["kpts"][:, 0], cams["intrinsics"], resolution
        )
        ref = pixels_at(
            sample["ref_image"][:, 0], sample["ref_kpts"][:, 0], cams["ref_intrinsics"], resolution
        )
        n = views["images"].shape[0]
        # One call per sample: views, reference, anchors, reference anchor -> [2N + 2, C, h, w].
        stack = torch.cat([views["images"], ref["images"], views["anchor"], ref["anchor"]])
        encoded = compressor.encode(stack.to(device)).to("cpu", dtype)
        latent_shape = list(encoded.shape[1:])
        writer.add(
            names[index],
            {
                "latents": encoded[:n],
                "ref_latent": encoded[n : n + 1],
                "anchor_latents": encoded[n + 1 : 2 * n + 1],
                "ref_anchor_latent": encoded[2 * n + 1 :],
            },
        )
    writer.close(
        {
            "kind": CACHE_KIND,
            "cache_version": CACHE_VERSION,
            "identity": compressor.identity_key(),
            "resolution": resolution,
            "source_fingerprint": source.fingerprint(),
            "latent_shape": latent_shape,
        }
    )
    return {"count": len(source), "latent_shape": latent_shape}
