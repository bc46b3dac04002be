"""The layout is enforced (issue #16): import layers and no source file over 400 lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pippo_lightning"
MAX_LINES = 400


def oversized_files(package: Path, limit: int = MAX_LINES) -> list[str]:
    """`path: lines` for each Python file of `package` longer than `limit` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(package.parent)}: {lines}")
    return found


def test_no_source_file_is_over_400_lines() -> None:
    assert oversized_files(PACKAGE) == [], "split these files (one concept per module)"


def test_the_size_check_sees_a_long_file(tmp_path: Path) -> None:
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert oversized_files(tmp_path) == [f"{tmp_path.name}/long.py: {MAX_LINES + 1}"]


def _lint_imports() -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "lint-imports"
    if not executable.is_file():
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [str(executable), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_import_layers_hold() -> None:
    """The contracts of pyproject.toml [tool.importlinter]: layers, pure-torch packages, thin
    and independent CLIs."""
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
