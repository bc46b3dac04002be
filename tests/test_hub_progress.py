"""Hub transfers show progress (issue #17.3): downloads and uploads draw rich bars (bytes, ETA)
in our display on a terminal, and nothing at all under CI, huggingface_hub's own tqdm bars
included. Runs against test_hub's stand-in Hub on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from pippo_lightning.sharing.transfer import upload_with_progress
from pippo_lightning.sharing.uris import hub_snapshot
from tests.test_hub import StandInHub, _dataset, hub, sample_bytes  # noqa: F401 (fixtures)

pytest.importorskip("huggingface_hub")

#: the fake repo's files: 3000 bytes in all (rich shows "3.0/3.0 kB")
FAKE_FILES = {
    "model.safetensors": b"\x01" * 2500,
    "pippo.json": b"{}" * 200,
    "notes.txt": b"#" * 100,
}


@pytest.fixture
def fake_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fake_repo"
    folder.mkdir()
    for name, data in FAKE_FILES.items():
        (folder / name).write_bytes(data)
    return folder


def _upload(stand_in: StandInHub, folder: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("me/fake", repo_type="model", exist_ok=True)
    upload_with_progress(api, "me/fake", folder, "a fake repo")
    assert stand_in.repos[("models", "me/fake")].files == FAKE_FILES


def _download(stand_in: StandInHub, samples: dict[str, bytes]) -> Path:
    _dataset(stand_in, samples)
    snapshot = hub_snapshot("yashkant/pippo", "dataset", None, "ava_samples/*", "download", "test")
    assert sorted(p.name for p in (snapshot / "ava_samples").iterdir()) == sorted(
        name.split("/")[1] for name in samples
    )
    return snapshot


def test_an_upload_shows_its_bytes_with_an_eta(
    hub: StandInHub,  # noqa: F811
    fake_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
):
    monkeypatch.setenv("PIPPO_PROGRESS", "1")
    _upload(hub, fake_folder)
    out = capsys.readouterr().out
    assert "upload me/fake" in out and "3.0/3.0 kB" in out and "ETA" in out


def test_a_download_shows_files_and_bytes_in_our_display(
    hub: StandInHub,  # noqa: F811
    sample_bytes: dict[str, bytes],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys,
):
    monkeypatch.setenv("PIPPO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "160")  # rich's width off a terminal: the whole line
    _download(hub, sample_bytes)
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if "download yashkant/pippo" in line]
    assert len(lines) == 2, captured.out  # one line of files, one of bytes
    files = len(sample_bytes)
    assert "files" in lines[0] and f"{files}/{files}" in lines[0], captured.out
    total_kb = sum(len(data) for data in sample_bytes.values()) / 1000
    assert "bytes" in lines[1] and f"{total_kb:.1f}/{total_kb:.1f} kB" in lines[1], captured.out
    assert all("ETA" in line for line in lines)
    assert "it/s" not in captured.err + captured.out  # no tqdm bar of huggingface_hub's own


def test_transfers_are_silent_under_ci(
    hub: StandInHub,  # noqa: F811
    sample_bytes: dict[str, bytes],  # noqa: F811
    fake_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
):
    monkeypatch.delenv("PIPPO_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("TQDM_POSITION", "-1")  # would force huggingface_hub's own bars on
    _upload(hub, fake_folder)
    _download(hub, sample_bytes)
    captured = capsys.readouterr()
    printed = captured.out + captured.err  # (log records of other tests' handlers may land here)
    for bar_mark in ("━", "upload me/fake", "download yashkant", "%|", "it/s", "B/s"):
        assert bar_mark not in printed, printed
