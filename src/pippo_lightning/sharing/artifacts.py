"""W&B artifacts: a run's checkpoint, eval report and config logged next to its metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- W&B artifacts
def _wandb_run(target: Any) -> Any:
    """A wandb Run from a Run, a Lightning WandbLogger, or a list of loggers (None: none)."""
    if target is None:
        return None
    if isinstance(target, Iterable) and not isinstance(target, str | bytes):
        for item in target:
            run = _wandb_run(item)
            if run is not None:
                return run
        return None
    if type(target).__name__ == "WandbLogger":
        return target.experiment
    if hasattr(target, "log_artifact") and hasattr(target, "dir"):
        return target
    return None


def _offline(run: Any) -> bool:
    settings = getattr(run, "settings", None)
    mode = getattr(settings, "mode", None) or os.environ.get("WANDB_MODE", "")
    return str(mode) in ("offline", "dryrun") or bool(getattr(run, "offline", False))


def _artifact_file(run: Any, artifact: Any, name: str, path: Path) -> None:
    """Add ``path`` to ``artifact``. Offline, the file is first copied into the offline run's
    directory and referenced in place there (policy immutable), so the artifact's content stays
    with the run until `wandb sync` uploads it — W&B's default staging dir lives elsewhere
    (WANDB_DATA_DIR) and is easy to lose."""
    if not _offline(run):
        artifact.add_file(str(path), name=name)
        return
    keep = Path(run.dir).parent / "artifacts" / artifact.name / name
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, keep)
    artifact.add_file(str(keep), name=name, policy="immutable")


def log_artifacts(
    target: Any,
    checkpoint: str | Path | None = None,
    report: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> list[Any]:
    """Log a checkpoint (type ``model``) and/or a pippo-eval report (type ``eval-report``) as
    W&B artifacts of the run behind ``target``, each with the resolved config. No W&B run:
    nothing is logged (CSV / no logger configs). Returns the logged artifacts."""
    wandb = require("wandb", "logging W&B artifacts")

    run = _wandb_run(target)
    if run is None:
        log.info("no W&B run: artifacts not logged")
        return []
    base = re.sub(r"[^\w.-]+", "-", name or run.name or run.id)
    config_text = yaml.safe_dump(dict(config or {}), sort_keys=False)
    logged = []
    for kind, path in (("model", checkpoint), ("eval-report", report)):
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise PippoError(f"cannot log {path} as a W&B artifact: it does not exist")
        artifact = wandb.Artifact(f"{base}-{kind}", type=kind, metadata=_artifact_metadata(path))
        _artifact_file(run, artifact, path.name, path)
        if kind == "eval-report" and path.with_suffix(".md").is_file():
            _artifact_file(run, artifact, path.with_suffix(".md").name, path.with_suffix(".md"))
        with tempfile.TemporaryDirectory() as scratch:
            config_path = Path(scratch) / "config.yaml"
            config_path.write_text(config_text)
            _artifact_file(run, artifact, "config.yaml", config_path)
            run.log_artifact(artifact)
        logged.append(artifact)
    return logged


def _artifact_metadata(path: Path) -> dict[str, Any]:
    """Searchable facts: the step of a checkpoint, the headline metrics of a report."""
    if path.suffix == ".json":
        report = json.loads(path.read_text())
        metrics = {k: v for k, v in (report.get("metrics") or {}).items() if v is not None}
        return {"global_step": report.get("global_step"), **metrics}
    try:
        state = load_torch_file(path, mmap=True)
        return {"global_step": int(state.get("global_step") or 0)}
    except Exception:  # metadata is a nicety; an odd file is still logged
        return {}


def log_artifacts_if_enabled(
    enabled: bool,
    loggers: Any,
    checkpoint: str | Path | None = None,
    report: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The config switch (``wandb_artifacts: true``) in one call for the CLIs."""
    if not enabled:
        return []
    return log_artifacts(loggers, checkpoint=checkpoint, report=report, config=config)
