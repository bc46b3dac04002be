"""``pippo-data validate``: every problem in every sample file, never a crash.

Checks, per sample (``.npy`` file or shard entry):

- structure (:func:`~pippo_lightning.data.schema.validate_sample`): unreadable / garbage files,
  missing keys, wrong types, shapes (with sizes that must agree across keys), dtypes, non-finite
  numbers, pixel values outside [0, 255]; a missing reference camera that ``ref_cam_pose`` does
  not decode to is a warning naming the target camera training stands in for it
  (:func:`~pippo_lightning.data.schema.reference_camera_problem`);
- cameras, visibility of the head and consistency of the derived entries
  (:mod:`~pippo_lightning.data.geometry_checks`, whose docstring lists each check).

Errors make the command exit non-zero; warnings do too with ``--strict``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pippo_lightning.data.geometry_checks import GEOMETRY_CHECKS
from pippo_lightning.data.npy_io import read_npy_sample
from pippo_lightning.data.schema import (
    SAMPLE_KEYS,
    Problem,
    SampleError,
    canonical_sample,
    validate_sample,
    with_reference_camera,
)
from pippo_lightning.data.shards import INDEX_FILE, ShardReader
from pippo_lightning.progress import track


@dataclass
class Report:
    """What ``validate`` found: every problem, and how much it looked at."""

    problems: list[Problem] = field(default_factory=list)
    samples: int = 0
    files: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def summary(self) -> str:
        return (
            f"checked {self.samples} samples in {self.files} files: "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )


# ----------------------------------------------------------------------------- walking paths
@dataclass(frozen=True)
class _Unit:
    """One thing to check: an ``.npy`` file or one sample of a shard directory."""

    path: str
    shard_index: int | None = None


def validate_path(paths: str | Path | Sequence[str | Path], jobs: int = 1) -> Report:
    """Validate ``.npy`` files, shard directories, or folders of them (recursively)."""
    report = Report()
    units: list[_Unit] = []
    for path in [paths] if isinstance(paths, str | Path) else paths:
        found = _collect(Path(path), report)
        if not found and Path(path).is_dir() and not report.problems:
            report.problems.append(
                Problem(str(path), None, "no samples found (*.npy files or shard directories)")
            )
        units += found
    report.files += len({u.path for u in units})
    if jobs > 1 and len(units) > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(
                track(pool.map(_check_unit, units, chunksize=8), "pippo-data validate", len(units))
            )
    else:
        results = [_check_unit(unit) for unit in track(units, "pippo-data validate")]
    for count, problems in results:
        report.samples += count
        report.problems += problems
    return report


def _collect(path: Path, report: Report) -> list[_Unit]:
    """Units under ``path``; problems that stop a whole directory go straight to ``report``."""
    if not path.exists():
        report.problems.append(Problem(str(path), None, "does not exist"))
        return []
    if path.is_file():
        if path.name == INDEX_FILE:
            return _collect(path.parent, report)
        if path.suffix == ".safetensors":
            return _collect(path.parent, report)
        return [_Unit(str(path))]
    if (path / INDEX_FILE).is_file():
        return _shard_units(path, report)
    units: list[_Unit] = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):  # staging directories of atomic writes
            continue
        if child.is_dir():
            units += _collect(child, report)
        elif child.suffix == ".npy":
            units.append(_Unit(str(child)))
    return units


def _shard_units(directory: Path, report: Report) -> list[_Unit]:
    try:
        reader = ShardReader(directory)
    except SampleError as error:
        report.problems.append(_file_problem(str(directory / INDEX_FILE), error))
        return []
    if reader.index.get("kind", "").endswith("latent_cache"):
        return []  # encodings, not samples: pippo-data cache-latents checks them
    units = []
    for shard, path in enumerate(reader.files):
        try:
            reader.entries(shard)
        except SampleError as error:
            report.problems.append(_file_problem(str(path), error))
            report.files += 1
            continue
        start, stop = reader.starts[shard], reader.starts[shard + 1]
        units += [_Unit(str(directory), index) for index in range(start, stop)]
    return units


def _file_problem(path: str, error: Exception) -> Problem:
    message = str(error)
    return Problem(path, None, message.removeprefix(f"{path}: "))


_READERS: dict[str, ShardReader] = {}


def _shard_reader(directory: str) -> ShardReader:
    """One reader per shard directory and process (the index is parsed once, not per sample)."""
    if directory not in _READERS:
        _READERS[directory] = ShardReader(directory)
    return _READERS[directory]


def _check_unit(unit: _Unit) -> tuple[int, list[Problem]]:
    """(samples checked, problems) of one unit. Never raises."""
    where = unit.path
    try:
        if unit.shard_index is None:
            raw = read_npy_sample(unit.path)
        else:
            reader = _shard_reader(unit.path)
            where = reader.describe(unit.shard_index)
            raw = reader.read(unit.shard_index)
    except SampleError as error:
        return 1, [_file_problem(where, error)]
    except Exception as error:  # anything else is still a problem of this file, not a crash
        return 1, [Problem(where, None, f"cannot read: {type(error).__name__}: {error}")]
    return 1, validate_raw(raw, where)


def validate_raw(raw: dict[str, Any], where: str) -> list[Problem]:
    """Structural and geometric problems of one raw sample dict."""
    try:
        sample = canonical_sample(raw)
        problems = validate_sample(sample, where)
        # A decoded reference camera is checked too; a stand-in target camera is not (it was
        # checked as a target, and ref_cam_pose would never match it).
        sample = with_reference_camera(sample, fallback=False)
    except Exception as error:
        return [Problem(where, None, f"cannot check: {type(error).__name__}: {error}")]
    broken = {p.key for p in problems} | {_missing_key(p) for p in problems if p.key is None}
    for check in GEOMETRY_CHECKS:
        try:
            problems += check(sample, where, broken)
        except Exception as error:  # a check must never take the validator down
            problems.append(
                Problem(where, None, f"{check.__name__} failed: {type(error).__name__}: {error}")
            )
    return problems


def _missing_key(problem: Problem) -> str | None:
    """The key named by a 'missing key' problem (so checks that need it are skipped)."""
    if problem.message.startswith("missing key "):
        return problem.message.split("'")[1]
    return None


def iter_report_lines(report: Report) -> Iterator[str]:
    """Human-readable lines: one per problem, then the summary."""
    for problem in report.problems:
        tag = "warning" if problem.severity == "warning" else "error"
        yield f"{tag}: {problem}"
    yield report.summary()


def report_json(report: Report) -> str:
    """The report as JSON (for CI and scripts)."""
    return json.dumps(
        {
            "samples": report.samples,
            "files": report.files,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "problems": [
                {"path": p.path, "key": p.key, "message": p.message, "severity": p.severity}
                for p in report.problems
            ],
        },
        indent=2,
    )


__all__ = [
    "SAMPLE_KEYS",
    "Report",
    "iter_report_lines",
    "report_json",
    "validate_path",
    "validate_raw",
]
