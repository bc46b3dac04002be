"""`pip install .` (not editable) into a fresh venv, then `pippo-train` from another directory
composes the packaged configs and trains (issue #16).

Nothing is downloaded: the wheel is built without build isolation and installed without
dependencies; the fresh venv sees this environment's packages (torch, lightning, hydra, ...)
through a .pth file, which does not run this environment's editable-install hook, so
`pippo_lightning` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _fresh_venv(where: Path) -> Path:
    """A venv without pippo_lightning that sees this environment's other packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(purelib, "shared_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_pippo_train_runs_from_another_directory(tmp_path: Path) -> None:
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        source,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("pippo_lightning-*.whl")

    python = _fresh_venv(tmp_path / "venv")
    _run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [str(python), "-c", "import pippo_lightning.cli.common as c; print(c.CONFIG_DIR)"],
        elsewhere,
        env,
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the wheel's, not the checkout's
    assert (Path(where) / "experiment" / "demo_cpu.yaml").is_file()  # the recipes ship too

    overrides = [*TINY_RUN, "trainer.max_steps=2", "logger=csv"]
    _run([str(tmp_path / "venv" / "bin" / "pippo-train"), *overrides], elsewhere, env)
    assert list(elsewhere.glob("**/checkpoints/last.ckpt")), "no checkpoint written"
