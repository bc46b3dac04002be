"""Progress you can see (issue #17.3): rich bars with an ETA on a terminal, nothing under CI or
when output goes to a file, for the long loops outside the Trainer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pippo_lightning.progress import progress_bar, progress_enabled, track
from pippo_lightning.studio.synthetic import StudioConfig, generate_studio


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_forcing(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("PIPPO_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


def test_bars_show_on_a_terminal_only_and_never_under_ci(no_forcing):
    assert progress_enabled(_Terminal()) is True
    assert progress_enabled(io.StringIO()) is False  # a log file, a pipe, a SLURM job's output
    no_forcing.setenv("CI", "true")
    assert progress_enabled(_Terminal()) is False
    no_forcing.setenv("PIPPO_PROGRESS", "1")  # forced on, e.g. to see it in a notebook
    assert progress_enabled(io.StringIO()) is True
    no_forcing.setenv("PIPPO_PROGRESS", "0")
    assert progress_enabled(_Terminal()) is False


def test_quiet_track_yields_everything_and_prints_nothing(no_forcing, capsys):
    assert list(track(range(5), "quiet")) == [0, 1, 2, 3, 4]  # pytest's output is no terminal
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_a_shown_bar_counts_the_items_and_has_an_eta(no_forcing, capsys):
    no_forcing.setenv("PIPPO_PROGRESS", "1")
    assert list(track([1, 2, 3], "counting")) == [1, 2, 3]
    out = capsys.readouterr().out
    assert "counting" in out and "3/3" in out and "ETA" in out


def test_nested_bars_share_one_display(no_forcing, capsys):
    # rich refuses a second live display; pippo-eval's batches wrap the sampler's steps
    no_forcing.setenv("PIPPO_PROGRESS", "1")
    with progress_bar("outer", 2) as outer:
        for _ in range(2):
            assert list(track(range(3), "inner")) == [0, 1, 2]
            outer.advance()
    out = capsys.readouterr().out
    assert "outer" in out and "2/2" in out


@pytest.mark.parametrize("forced, shown", [("1", True), ("0", False)])
def test_studio_rendering_shows_progress(no_forcing, tmp_path: Path, capsys, forced, shown):
    no_forcing.setenv("PIPPO_PROGRESS", forced)
    config = StudioConfig(
        num_train_subjects=2, num_val_subjects=1, resolution=16, rings=((10.0, 2),)
    )
    generate_studio(config, tmp_path / "studio")
    out = capsys.readouterr().out
    assert ("rendering the studio (train)" in out and "2/2" in out) is shown


def test_validate_and_latent_caching_show_progress(no_forcing, tmp_path: Path, capsys):
    from pippo_lightning.compressors.identity import IdentityCompressor
    from pippo_lightning.data.latent_cache import cache_latents
    from pippo_lightning.data.validate import validate_path

    config = StudioConfig(
        num_train_subjects=2, num_val_subjects=1, resolution=16, rings=((10.0, 2),)
    )
    generate_studio(config, tmp_path / "studio")
    no_forcing.setenv("PIPPO_PROGRESS", "1")
    capsys.readouterr()
    validate_path(tmp_path / "studio" / "train")
    assert "pippo-data validate" in capsys.readouterr().out
    cache_latents(
        tmp_path / "studio", IdentityCompressor(), resolution=16, cache_root=tmp_path / "cache"
    )
    assert "caching latents (train)" in capsys.readouterr().out
