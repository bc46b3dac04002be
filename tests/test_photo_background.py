"""Optional background removal for pippo-generate's photo (issue #17.6): rembg's U²-Net session
runs a local ONNX file (never a download) and the person lands on the studio backdrop.

The segmentation model is made here: a tiny conv net exported with torch.onnx whose mask is a
centred disk whatever the image, so where the photo must keep its pixels and where it must
become backdrop is known without trusting the code under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pippo_lightning.inference.photo import STUDIO_BACKGROUND, read_photo
from pippo_lightning.inference.photo_background import (
    BackgroundSettings,
    SegmentationWeightsError,
    photo_for_config,
)
from pippo_lightning.inference.photo_framing import frame_for_config
from tests.test_generate import TinyRun, error_lines, generate_overrides, tiny_run

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("rembg")
pytest.importorskip("onnx")  # torch.onnx.export writes through it

U2NET_SIDE = 320  # rembg's U²-Net sessions feed the network 320 x 320
DISK_RADIUS = 0.4  # of the side: the "person" the tiny model segments
BACKDROP = [0.2, 0.4, 0.6]  # not the default, so the colour is seen to come from the config


class DiskSegmenter(nn.Module):
    """image [B, 3, 320, 320] → mask logits [B, 1, 320, 320]: 1 inside a centred disk, 0 out.

    The conv keeps the input in the exported graph (rembg feeds the session's first input);
    its zero weight keeps the mask independent of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.register_buffer("disk", disk_mask(U2NET_SIDE, U2NET_SIDE)[None, None])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.disk + self.conv(image)


def disk_mask(height: int, width: int, margin: float = 0.0) -> torch.Tensor:
    """[H, W] bool: inside the centred disk of radius DISK_RADIUS * min side, less ``margin``."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    distance = ((rows - (height - 1) / 2) ** 2 + (cols - (width - 1) / 2) ** 2).sqrt()
    return distance < DISK_RADIUS * min(height, width) + margin


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("segmenter") / "disk_u2net.onnx"
    torch.onnx.export(
        DiskSegmenter().eval(),
        (torch.zeros(1, 3, U2NET_SIDE, U2NET_SIDE),),
        str(path),
        input_names=["input.1"],
        output_names=["mask"],
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)  # [512, 512, 3], a real photograph
    return path


def removal_config(model_path: Path | None, **framing: object) -> dict:
    return {
        "background": {"color": BACKDROP, "remove": True, "model_path": model_path},
        "framing": {"mode": "face", **framing},
        "crop_box": None,
        "reference": {"radius": 2.8, "height": 1.65, "target": [0.0, 0.95, 0.0], "fov_deg": 40.0},
        "anchor": {"center": [0.0, 1.65, 0.01]},
    }


def test_background_of_a_real_photograph_becomes_the_backdrop(
    segmenter_file: Path, astronaut: Path
):
    original = read_photo(astronaut)  # [3, 512, 512], 0-255
    cut_out = photo_for_config(removal_config(segmenter_file), astronaut)
    assert cut_out.shape == original.shape
    height, width = original.shape[-2:]
    # 320 → 512 resampling blurs the mask's edge over a few pixels: judge away from it
    background = ~disk_mask(height, width, margin=6.0)
    person = disk_mask(height, width, margin=-6.0)
    backdrop = torch.tensor(BACKDROP).reshape(3, 1) * 255.0
    assert background.float().mean() > 0.4 and person.float().mean() > 0.4
    assert torch.allclose(cut_out[:, background], backdrop.expand(3, int(background.sum())))
    assert torch.equal(cut_out[:, person], original[:, person])
    # the astronaut's own background was not already that colour
    assert (original[:, background] - backdrop).abs().amax(dim=0).gt(10).float().mean() > 0.9


def test_the_cut_out_person_is_framed_on_the_same_backdrop(segmenter_file: Path, astronaut: Path):
    cfg = removal_config(segmenter_file)
    cut_out = photo_for_config(cfg, astronaut)
    framed = frame_for_config(cfg, cut_out)
    assert framed is not None  # her face is inside the disk: still found
    left, top, right, bottom = framed.crop_box
    # every crop pixel from outside the disk, inside the photo or past its edge, is backdrop
    side = right - left
    rows = torch.arange(top, bottom, dtype=torch.float32)[:, None].expand(side, side)
    cols = torch.arange(left, right, dtype=torch.float32)[None, :].expand(side, side)
    centre = (512 - 1) / 2
    outside = ((rows - centre) ** 2 + (cols - centre) ** 2).sqrt() > DISK_RADIUS * 512 + 6
    backdrop = torch.tensor(BACKDROP).reshape(3, 1) * 255.0
    assert torch.allclose(framed.image[:, outside], backdrop.expand(3, int(outside.sum())))
    assert 0.0 < float(outside.float().mean()) < 1.0  # the person (the disk) is in view


def test_removal_without_local_weights_names_the_key_and_the_file(tmp_path: Path, astronaut: Path):
    with pytest.raises(SegmentationWeightsError, match=r"needs background\.model_path"):
        photo_for_config(removal_config(None), astronaut)
    missing = tmp_path / "u2net_human_seg.onnx"
    with pytest.raises(SegmentationWeightsError) as info:
        photo_for_config(removal_config(missing), astronaut)
    assert f"background.model_path={missing} does not exist" in str(info.value)
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(SegmentationWeightsError, match="is not a loadable ONNX model"):
        photo_for_config(removal_config(not_onnx), astronaut)


def test_background_settings_are_checked():
    assert BackgroundSettings.from_config(None).color == STUDIO_BACKGROUND
    with pytest.raises(ValueError, match="background must be a mapping"):
        BackgroundSettings.from_config([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        BackgroundSettings.from_config({"colour": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"background\.color must be 3 numbers in \[0, 1\]"):
        BackgroundSettings.from_config({"color": [0, 128, 255]})
    with pytest.raises(ValueError, match="background.remove must be true or false"):
        BackgroundSettings.from_config({"remove": "yes"})


# ---------------------------------------------------------------------- through pippo-generate
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return tiny_run(tmp_path_factory)


def test_generate_without_the_weights_stops_before_loading_the_model(
    tmp_path: Path, astronaut: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from pippo_lightning.cli.generate import main as generate_main

    missing = tmp_path / "u2net_human_seg.onnx"
    argv = [
        f"ckpt={tmp_path / 'never_read.ckpt'}",  # the model is never loaded
        f"photo={astronaut}",
        "background.remove=true",
        f"background.model_path={missing}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    with pytest.raises(SystemExit) as exit_info:
        generate_main()
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"background.model_path={missing} does not exist" in line


def test_generate_removes_the_background_of_a_real_photograph(
    trained: TinyRun,
    segmenter_file: Path,
    astronaut: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
):
    from pippo_lightning.cli.generate import main as generate_main

    out = tmp_path / "out"
    argv = generate_overrides(
        trained,
        astronaut,
        "num_views=2",
        "framing.mode=centre",  # the whole photo is the reference: its corners are background
        "background.remove=true",
        f"background.model_path={segmenter_file}",
        f"background.color={BACKDROP}".replace(" ", ""),
        f"hydra.run.dir={out}",
    )
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    generate_main()
    capsys.readouterr()
    frames = sorted((out / "frames").glob("view_*.png"))
    assert len(frames) == 2
    side = np.asarray(Image.open(frames[0])).shape[0]
    reference = np.asarray(Image.open(out / "grid.png"))[:side, :side]  # the grid's first tile
    backdrop = np.round(np.array(BACKDROP) * 255)
    corners = reference[[0, 0, -1, -1], [0, -1, 0, -1]].astype(float)  # [4, 3]
    assert np.abs(corners - backdrop).max() <= 1  # the astronaut's background is gone
    centre = reference[side // 2, side // 2].astype(float)
    assert np.abs(centre - backdrop).max() > 10  # the person stays
