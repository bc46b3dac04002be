"""scripts/gpu_checks.py (issue #14's GPU targets) runs end to end on CPU in its dry-run mode, so
the one device session it gets is not spent on a broken script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_gpu_checks_dry_run_writes_every_asked_check(tmp_path: Path) -> None:
    checks = ["p3_512px_4views_50steps", "train_mfu_128px"]
    result = subprocess.run(
        [sys.executable, "scripts/gpu_checks.py", "--out", str(tmp_path), "--dry-run"]
        + ["--checks", *checks],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_checks.json").read_text())
    text = json.dumps(report)
    for name in checks:
        assert name in text
    assert (tmp_path / "gpu_checks.md").read_text().count("dry run") == len(checks)
