"""Photo folders for single-view pre-training: any tree of photos, bad files counted, not dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pippo_lightning.captures.photo_folder import (
    PhotoFolderDataModule,
    PhotoFolderDataset,
    load_photo,
    scan_photos,
)
from pippo_lightning.cli.data import main
from pippo_lightning.data.benchmark import benchmark_dataloader
from pippo_lightning.data.schema import SampleError


def _photo(path: Path, size: tuple[int, int], mode: str = "RGB", **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode).save(path, **save)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _photo(root / "a.jpg", (40, 30))
    _photo(root / "people/b.png", (30, 50), "RGBA")
    _photo(root / "people/deeper/c.jpeg", (64, 64), "L")
    _photo(root / "people/deeper/d.webp", (33, 21))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "people/empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not a photo")
    full = _photo(root / "people/cut.jpg", (64, 48)).read_bytes()
    (root / "people/cut.jpg").write_bytes(full[: len(full) // 3])  # header fine, body cut
    return root


def test_scan_counts_every_unreadable_photo_with_its_reason(folder: Path) -> None:
    header = scan_photos(folder, check="header")
    assert len(header.files) == 5 and header.ignored == 1
    assert sorted(p.name for p, _ in header.unreadable) == ["broken.jpg", "empty.png"]
    decoded = scan_photos(folder, check="decode")
    assert sorted(p.name for p, _ in decoded.unreadable) == ["broken.jpg", "cut.jpg", "empty.png"]
    assert all(reason for _, reason in decoded.unreadable)


def test_items_are_single_view_square_and_in_unit_range(folder: Path) -> None:
    files = scan_photos(folder, check="decode").files
    dataset = PhotoFolderDataset(files, resolution=24)
    for index in range(len(dataset)):
        item = dataset[(index, 3)]
        assert item["images"].shape == (1, 3, 24, 24) and item["index"] == index
        assert float(item["images"].min()) >= -1 and float(item["images"].max()) <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue as stored
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half ends on top
    Image.fromarray(pixels).save(tmp_path / "p.jpg", exif=exif, quality=95)
    image = load_photo(tmp_path / "p.jpg", 16)  # [3, 16, 16]
    top, bottom = image[:, :4].mean(dim=(1, 2)), image[:, -4:].mean(dim=(1, 2))
    assert float(top[0]) > float(top[2]) and float(bottom[2]) > float(bottom[0])


def test_datamodule_reports_unreadable_files_and_serves_batches(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data = PhotoFolderDataModule(
        str(folder), resolution=16, batch_size=2, val_fraction=0.0, check="decode"
    )
    data.setup("fit")
    assert sorted(p.name for p, _ in data.unreadable) == ["broken.jpg", "cut.jpg", "empty.png"]
    assert "3 of 7 photos under" in caplog.text and "broken.jpg" in caplog.text
    batch = next(iter(data.train_dataloader()))
    assert batch["images"].shape == (2, 1, 3, 16, 16) and batch["index"].shape == (2,)
    assert data.val_dataloader() == []
    assert benchmark_dataloader(data, num_batches=2) > 0


def test_a_photo_failing_during_training_raises_or_is_skipped_loudly(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = sorted(scan_photos(folder, check="header").files)
    cut = next(i for i, p in enumerate(files) if p.name == "cut.jpg")
    with pytest.raises(SampleError, match=r"cut\.jpg: cannot read the photo"):
        PhotoFolderDataset(files, 16)[cut]
    caplog.set_level(logging.WARNING)
    skipping = PhotoFolderDataset(files, 16, on_error="skip")
    assert skipping[cut]["images"].shape == (1, 3, 16, 16)
    assert [p.name for p, _ in skipping.failures] == ["cut.jpg"]
    assert "skipping unreadable photo" in caplog.text and "cut.jpg" in caplog.text


def test_scan_photos_cli_lists_unreadable_files(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["scan-photos", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("error: ") == 3
    assert "4 photos, 3 unreadable, 1 other files ignored" in captured.err


def test_photo_folder_config_composes_and_instantiates(folder: Path, compose_config) -> None:
    import hydra

    cfg = compose_config("data=photo_folder", f"data.root={folder}", "data.num_workers=0")
    data = hydra.utils.instantiate(cfg.data)
    assert isinstance(data, PhotoFolderDataModule) and data.resolution == cfg.image_size
