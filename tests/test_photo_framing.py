"""A real photo in, a turnaround out (issue #17.6): the face is found offline and the photo is
cropped to the training reference framing; tested on a real photograph (scikit-image's
astronaut), not only on studio renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pippo_lightning.inference.photo_framing import (
    HeadFraming,
    crop_around_face,
    crop_with_backdrop,
    detect_face,
    head_framing,
)
from tests.test_generate import TinyRun, generate_overrides, tiny_run

skimage_data = pytest.importorskip("skimage.data")

#: the generate config's reference camera and anchor (configs/generate.yaml)
REFERENCE = {"radius": 2.8, "height": 1.65, "target": [0.0, 0.95, 0.0], "fov_deg": 40.0}
HEAD = [0.0, 1.65, 0.01]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return tiny_run(tmp_path_factory)


def test_the_face_of_a_real_photograph_is_found_offline():
    astronaut = skimage_data.astronaut()  # [512, 512, 3] uint8, Eileen Collins
    left, top, right, bottom = detect_face(astronaut)
    # her face, by eye: centred near x 220, y 115, about 90 px tall
    assert 190 < (left + right) / 2 < 250 and 85 < (top + bottom) / 2 < 145
    assert 60 < bottom - top < 130
    assert detect_face(np.full((128, 128, 3), 200, np.uint8)) is None  # a blank wall


def test_reference_framing_puts_the_head_high_in_the_frame():
    framing = head_framing(REFERENCE, HEAD, head_height_m=0.24)
    # the camera is at head height looking down at the body's centre: the head sits high,
    # centred left-right, a small part of the full-body frame
    assert framing.u == pytest.approx(0.5)
    assert 0.05 < framing.v < 0.3
    assert 0.05 < framing.size < 0.2


def test_crop_places_the_face_where_the_reference_sees_the_head():
    framing = HeadFraming(u=0.5, v=0.2, size=0.1)
    box = crop_around_face((100, 100, 150, 150), framing, face_box_to_head=1.6)
    left, top, right, bottom = box
    side = right - left
    assert side == bottom - top == 800  # 50 px face x 1.6 = 80 px head = 0.1 of the side
    assert (125 - left) / side == pytest.approx(0.5) and (125 - top) / side == pytest.approx(0.2)


def test_a_crop_past_the_edge_is_filled_with_the_backdrop():
    photo = torch.zeros(3, 4, 4)
    crop = crop_with_backdrop(photo, (-2, -2, 4, 4), background=(1.0, 0.5, 0.0))
    assert crop.shape == (3, 6, 6)
    assert crop[:, :2, :].eq(torch.tensor([255.0, 127.5, 0.0]).reshape(3, 1, 1)).all()
    assert crop[:, 2:, 2:].eq(0).all()


def test_generate_turns_a_real_photograph_into_a_turnaround(
    trained: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from pippo_lightning.cli.generate import main as generate_main

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    out = tmp_path / "out"
    argv = generate_overrides(trained, photo, "num_views=4", f"hydra.run.dir={out}")
    monkeypatch.setattr(sys, "argv", ["pippo-generate", *argv])
    generate_main()
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    face, crop = summary["framing"]["face_box"], summary["framing"]["crop_box"]
    assert crop[0] < face[0] < face[2] < crop[2] and crop[1] < face[1] < face[3] < crop[3]
    assert len(list((out / "frames").glob("view_*.png"))) == 4
    assert (out / "grid.png").is_file() and Path(summary["video"]).is_file()
