"""Latent caches: encoded once, served in batches, keyed by compressor and resolution, never stale."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pippo_lightning.cli.data import build_compressor, main
from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.data import MultiViewDataModule
from pippo_lightning.data.benchmark import benchmark_dataloader, measure_dataloader
from pippo_lightning.data.dataset import BATCH_KEYS, LATENT_KEYS
from pippo_lightning.data.latent_cache import (
    StaleCacheError,
    cache_latents,
    check_latent_identity,
)
from pippo_lightning.data.npy_io import read_npy_sample, write_npy_sample
from pippo_lightning.studio.subject import SubjectParams
from pippo_lightning.studio.synthetic import StudioConfig, render_subject_sample

STUDIO = StudioConfig(resolution=16, rings=((0.0, 4), (30.0, 4)))


@pytest.fixture(scope="module")
def rendered() -> dict:
    return render_subject_sample(SubjectParams.sample(5), STUDIO)


@pytest.fixture
def root(rendered: dict, tmp_path: Path) -> Path:
    """train: 3 samples, val: 1 (one render, made distinct by brightening)."""
    for split, count in (("train", 3), ("val", 1)):
        (tmp_path / "data" / split).mkdir(parents=True)
        for index in range(count):
            variant = {**rendered, "image": (rendered["image"] + 3 * index).clamp(0, 255)}
            write_npy_sample(tmp_path / "data" / split / f"s{index}.npy", variant)
    return tmp_path / "data"


def datamodule(root: Path, **kwargs: object) -> MultiViewDataModule:
    options = {"num_views": 3, "resolution": 16, "batch_size": 2, "latent_cache": "auto"}
    return MultiViewDataModule(root=str(root), **{**options, **kwargs})


def test_cached_batches_hold_exactly_what_the_compressor_would_encode(root: Path) -> None:
    compressor = IdentityCompressor(space_to_depth=4)
    target = cache_latents(root, compressor, resolution=16)
    assert target == root / "latents" / "identity-s2d4-16px"
    data = datamodule(root)
    data.setup("fit")
    assert data.latent_identity == "identity-s2d4"
    check_latent_identity(data.latent_identity, compressor)
    for batch in (next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))):
        assert tuple(batch) == BATCH_KEYS + LATENT_KEYS
        torch.testing.assert_close(batch["latents"], compressor.encode(batch["images"]))
        torch.testing.assert_close(batch["ref_latent"], compressor.encode(batch["ref_image"]))
        anchors = torch.cat([batch["anchor"], batch["ref_anchor"]], dim=1)
        torch.testing.assert_close(batch["anchor_latents"], compressor.encode(anchors))
        assert batch["latents"].shape[1:] == (3, 48, 4, 4)
    with pytest.raises(StaleCacheError, match="identity-s2d4.*identity-s2d2"):
        check_latent_identity(data.latent_identity, IdentityCompressor(space_to_depth=2))


def test_stale_caches_are_detected_and_not_used(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compressor = IdentityCompressor(space_to_depth=4)
    target = cache_latents(root, compressor, resolution=16)
    stamp = (target / "manifest.json").stat().st_mtime_ns
    assert cache_latents(root, compressor, resolution=16) == target  # up to date: reused
    assert (target / "manifest.json").stat().st_mtime_ns == stamp

    caplog.set_level(logging.WARNING)
    other_size = datamodule(root, resolution=32)
    other_size.setup("fit")
    assert other_size.latent_identity is None
    assert "latents" not in next(iter(other_size.train_dataloader()))
    assert "encoded at 16 px, the data is served at 32 px" in caplog.text

    sample = read_npy_sample(root / "train/s1.npy")
    write_npy_sample(root / "train/s1.npy", {**sample, "note": "edited"})
    caplog.clear()
    edited = datamodule(root)
    edited.setup("fit")
    assert edited.train_dataset.latents is None
    assert "the samples changed since caching" in caplog.text
    cache_latents(root, compressor, resolution=16)  # rebuilt (atomically) ...
    again = datamodule(root)
    again.setup("fit")
    assert again.train_dataset.latents is not None  # ... and used again


def test_cli_builds_compressors_by_name_or_yaml_and_several_caches_need_a_key(
    root: Path, tmp_path: Path
) -> None:
    by_name = ["cache-latents", str(root), "--compressor", "space_to_depth"]
    assert main([*by_name, "--set", "space_to_depth=4", "--resolution", "16"]) == 0
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("_target_: pippo_lightning.compressors.identity.IdentityCompressor\n")
    args = ["cache-latents", str(root), "--compressor", str(yaml), "--set", "space_to_depth=2"]
    assert main([*args, "--resolution", "16"]) == 0
    assert build_compressor(str(yaml), ["space_to_depth=2"]).identity_key() == "identity-s2d2"
    assert sorted(p.name for p in (root / "latents").iterdir()) == [
        "identity-s2d2-16px",
        "identity-s2d4-16px",
    ]
    with pytest.raises(StaleCacheError, match="set data.latent_cache_key"):
        datamodule(root).setup("fit")
    chosen = datamodule(root, latent_cache_key="identity-s2d2")
    chosen.setup("fit")
    assert next(iter(chosen.train_dataloader()))["latents"].shape[2:] == (12, 8, 8)
    assert main(["cache-latents", str(root), "--compressor", "nope", "--resolution", "16"]) == 2


def test_benchmark_dataloader_reports_samples_per_second(root: Path) -> None:
    data = datamodule(root, latent_cache=None, batch_size=2)
    assert benchmark_dataloader(data, num_batches=3) > 0
    result = measure_dataloader(data, num_batches=4)
    assert result.batches == 4 and result.samples == 6  # 3 samples: batches of 2 and 1


def test_captures_config_composes_with_a_latent_cache(root: Path, compose_config) -> None:
    import hydra

    cache_latents(root, IdentityCompressor(space_to_depth=4), resolution=16)
    cfg = compose_config(
        "data=captures",
        f"data.root={root}",
        "data.latent_cache=auto",
        "data.num_workers=0",
        "image_size=16",
        "num_views=2",
    )
    data = hydra.utils.instantiate(cfg.data)
    data.setup("fit")
    assert data.latent_identity == "identity-s2d4"
    assert next(iter(data.train_dataloader()))["latents"].shape == (3, 2, 48, 4, 4)
