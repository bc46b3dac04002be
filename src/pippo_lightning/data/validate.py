"""``pippo-data validate``: every problem in every sample file, never a crash.

Checks, per sample (``.npy`` file or shard entry):

- structure (:func:`~pippo_lightning.data.schema.validate_sample`): unreadable / garbage files,
  missing keys, wrong types, shapes (with sizes that must agree across keys), dtypes, non-finite
  numbers, pixel values outside [0, 255]; a missing reference camera that ``ref_cam_pose`` does
  not decode to is a warning naming the target camera training stands in for it
  (:func:`~pippo_lightning.data.schema.reference_camera_problem`);
- cameras: rotations that are not orthonormal or are reflections, homogeneous rows that are not
  [0, 0, 0, 1], intrinsics with non-positive focal lengths, a principal point outside the image,
  or values that look normalised by the image size;
- visibility: the head (``head_center``) behind a camera or projecting outside its image; without
  a head position, views whose anchor image is empty;
- consistency (warnings: the original's files may use other layouts): ``cam_pose`` and ``plucker``
  against the cameras, unit-length head directions and ray directions, images that look like
  values in [0, 1].

Errors make the command exit non-zero; warnings do too with ``--strict``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
from pippo_lightning.geometry.cameras import camera_pose_vector, project_points
from pippo_lightning.geometry.plucker import plucker_rays
from pippo_lightning.progress import track

#: Tolerances; loose enough for float32 data written by other tools.
ROTATION_TOL = 1e-3
HOMOGENEOUS_TOL = 1e-6
CAM_POSE_TOL = 1e-3
PLUCKER_TOL = 1e-2
UNIT_TOL = 1e-2
#: Anchor images darker than this everywhere count as empty (0-255 scale).
ANCHOR_EMPTY = 8.0

#: (intrinsics key, extrinsics key, pixels key) of each camera group.
CAMERA_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("cam_intrin", "cam_extrin", "image"),
    ("ref_cam_intrin", "ref_cam_extrin", "ref_image"),
    ("face_cam_intrin", "face_cam_extrin", "face_image"),
)


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


def _usable(sample: dict[str, Any], broken: set[str | None], *keys: str) -> bool:
    return all(key in sample and key not in broken for key in keys)


# ----------------------------------------------------------------------------- camera checks
def _f64(x: Any) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _views(indices: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    more = f", ... ({len(indices)} in all)" if len(indices) > limit else ""
    return f"[{shown}{more}]"


def check_rotations(sample: dict[str, Any], where: str, broken: set[str | None]) -> list[Problem]:
    """World->camera rotations must be orthonormal with determinant +1; rows [0, 0, 0, 1]."""
    problems = []
    for _, extrinsics_key, _ in CAMERA_GROUPS:
        if not _usable(sample, broken, extrinsics_key):
            continue
        extrinsics = _f64(sample[extrinsics_key])  # [N, 3|4, 4]
        rotation = extrinsics[:, :3, :3]
        eye = torch.eye(3, dtype=torch.float64)
        error = (rotation @ rotation.transpose(1, 2) - eye).abs().amax(dim=(1, 2))  # [N]
        bad = torch.nonzero(error > ROTATION_TOL).flatten().tolist()
        if bad:
            problems.append(
                Problem(
                    where,
                    extrinsics_key,
                    f"rotation not orthonormal in views {_views(bad)}: expected R R^T = I "
                    f"(tolerance {ROTATION_TOL}), found max |R R^T - I| = {float(error.max()):.3g}"
                    " (scaled or sheared? camera-to-world matrices with scale?)",
                )
            )
        det = torch.linalg.det(rotation)
        flipped = torch.nonzero((det < 0) & (error <= ROTATION_TOL)).flatten().tolist()
        if flipped:
            problems.append(
                Problem(
                    where,
                    extrinsics_key,
                    f"rotation is a reflection (det = -1) in views {_views(flipped)}: expected a "
                    "proper rotation (det = +1); an axis is flipped (left-handed convention?)",
                )
            )
        if extrinsics.shape[1] == 4:
            row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
            off = torch.nonzero(
                (extrinsics[:, 3] - row).abs().amax(dim=1) > HOMOGENEOUS_TOL
            ).flatten()
            if off.numel():
                found = extrinsics[int(off[0]), 3].tolist()
                problems.append(
                    Problem(
                        where,
                        extrinsics_key,
                        f"last row must be [0, 0, 0, 1], found {found} in views "
                        f"{_views(off.tolist())}",
                    )
                )
    return problems


def check_intrinsics(sample: dict[str, Any], where: str, broken: set[str | None]) -> list[Problem]:
    """Positive focal lengths, principal point inside the image, pixel (not normalised) units."""
    problems = []
    for intrinsics_key, _, pixels_key in CAMERA_GROUPS:
        if not _usable(sample, broken, intrinsics_key, pixels_key):
            continue
        k = _f64(sample[intrinsics_key])[:, :3, :3]  # [N, 3, 3]
        height, width = sample[pixels_key].shape[-2:]
        last = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        if bool(((k[:, 2] - last).abs() > HOMOGENEOUS_TOL).any()):
            problems.append(
                Problem(
                    where,
                    intrinsics_key,
                    f"last row must be [0, 0, 1], found {k[0, 2].tolist()}",
                )
            )
        fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
        non_positive = torch.nonzero((fx <= 0) | (fy <= 0)).flatten().tolist()
        if non_positive:
            problems.append(
                Problem(
                    where,
                    intrinsics_key,
                    f"focal lengths must be > 0, found fx={float(fx[non_positive[0]]):.4g}, "
                    f"fy={float(fy[non_positive[0]]):.4g} in views {_views(non_positive)}",
                )
            )
        normalised = (fx.abs() < 4) & (cx.abs() <= 1) & (cy.abs() <= 1) & (max(height, width) > 8)
        outside = (cx < 0) | (cx > width) | (cy < 0) | (cy > height)
        if bool(normalised.any()):
            problems.append(
                Problem(
                    where,
                    intrinsics_key,
                    f"intrinsics look normalised by the image size (fx={float(fx[0]):.4g}, "
                    f"cx={float(cx[0]):.4g}, cy={float(cy[0]):.4g}): expected pixels of the "
                    f"{width}x{height} image (multiply row 0 by W and row 1 by H)",
                )
            )
        elif bool(outside.any()) and intrinsics_key != "face_cam_intrin":
            # Off-centre crops (head or face crops) may move it out legitimately: a warning.
            bad = torch.nonzero(outside).flatten().tolist()
            problems.append(
                Problem(
                    where,
                    intrinsics_key,
                    f"principal point outside the {width}x{height} image in views {_views(bad)}: "
                    f"found (cx, cy) = ({float(cx[bad[0]]):.4g}, {float(cy[bad[0]]):.4g})"
                    " (intrinsics of another resolution?)",
                    "warning",
                )
            )
    return problems


def check_visibility(sample: dict[str, Any], where: str, broken: set[str | None]) -> list[Problem]:
    """Every camera must see the head: in front of it and inside its image."""
    if not _usable(sample, broken, "head_center"):
        return _empty_anchor_problems(sample, where, broken)
    head = _f64(sample["head_center"])
    problems = []
    for intrinsics_key, extrinsics_key, pixels_key in CAMERA_GROUPS:
        if not _usable(sample, broken, intrinsics_key, extrinsics_key, pixels_key):
            continue
        k = _f64(sample[intrinsics_key])[:, :3, :3]
        e = _f64(sample[extrinsics_key])
        height, width = sample[pixels_key].shape[-2:]
        uv, depth = project_points(head.expand(k.shape[0], 1, 3), k, e[:, :3, :])
        uv, depth = uv[:, 0], depth[:, 0]  # [N, 2], [N]
        behind = torch.nonzero(depth <= 0).flatten().tolist()
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= width) & (uv[:, 1] >= 0) & (uv[:, 1] <= height)
        outside = torch.nonzero((depth > 0) & ~inside).flatten().tolist()
        if behind:
            problems.append(
                Problem(
                    where,
                    extrinsics_key,
                    f"the head is behind the camera in views {_views(behind)} (depth "
                    f"{float(depth[behind[0]]):.3g}): expected depth > 0; camera-to-world "
                    "matrices or OpenGL axes (camera looking down -z)?",
                )
            )
        if outside:
            u, v = uv[outside[0]].tolist()
            problems.append(
                Problem(
                    where,
                    extrinsics_key,
                    f"the head projects outside the {width}x{height} image in views "
                    f"{_views(outside)} (e.g. at ({u:.1f}, {v:.1f})): the camera does not see "
                    "the subject",
                )
            )
    return problems


def _empty_anchor_problems(
    sample: dict[str, Any], where: str, broken: set[str | None]
) -> list[Problem]:
    """Without a head position, an empty anchor image means the head is out of view."""
    problems = []
    for key in ("kpts", "ref_kpts"):
        if not _usable(sample, broken, key):
            continue
        peak = torch.as_tensor(sample[key]).float().flatten(1).amax(dim=1)  # [N]
        empty = torch.nonzero(peak < ANCHOR_EMPTY).flatten().tolist()
        if empty:
            problems.append(
                Problem(
                    where,
                    key,
                    f"anchor image empty (max {float(peak[empty[0]]):.3g} < {ANCHOR_EMPTY}) in "
                    f"views {_views(empty)}: the head is not in view",
                )
            )
    return problems


# ----------------------------------------------------------------------------- consistency
def check_consistency(sample: dict[str, Any], where: str, broken: set[str | None]) -> list[Problem]:
    """cam_pose / plucker against the cameras, unit head directions, [0, 1]-looking images."""
    problems = []
    groups = (
        ("cam_pose", "plucker", "cam_intrin", "cam_extrin", "image"),
        ("ref_cam_pose", "ref_plucker", "ref_cam_intrin", "ref_cam_extrin", "ref_image"),
    )
    for pose_key, rays_key, k_key, e_key, pixels_key in groups:
        if not _usable(sample, broken, k_key, e_key, pixels_key):
            continue
        k = _f64(sample[k_key])[:, :3, :3]
        e = _f64(sample[e_key])
        if e.shape[1] == 3:
            e = torch.cat([e, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(e.shape[0], 1, 4)], 1)
        height, width = sample[pixels_key].shape[-2:]
        if _usable(sample, broken, pose_key):
            expected = camera_pose_vector(k, e, width, height)
            diff = (_f64(sample[pose_key])[:, 0] - expected).abs().amax(dim=1)
            bad = torch.nonzero(diff > CAM_POSE_TOL).flatten().tolist()
            if bad:
                problems.append(
                    Problem(
                        where,
                        pose_key,
                        f"does not match the cameras in views {_views(bad)} (max difference "
                        f"{float(diff.max()):.3g}; expected [R|t] row-major, fx/W, fy/H, cx/W, "
                        "cy/H)",
                        "warning",
                    )
                )
        if _usable(sample, broken, rays_key):
            problems += _plucker_problems(sample[rays_key], k, e, where, rays_key)
    for key in ("head_forward", "head_up"):
        if _usable(sample, broken, key):
            norm = float(_f64(sample[key]).norm())
            if abs(norm - 1.0) > UNIT_TOL:
                severity = "error" if norm < 1e-6 else "warning"
                problems.append(
                    Problem(
                        where, key, f"expected a unit vector, found length {norm:.4g}", severity
                    )
                )
    for key in ("image", "ref_image"):
        if _usable(sample, broken, key) and torch.as_tensor(sample[key]).is_floating_point():
            values = torch.as_tensor(sample[key])
            if values.numel() and float(values.max()) <= 1.0 and float(values.min()) >= 0.0:
                problems.append(
                    Problem(
                        where,
                        key,
                        "values look like [0, 1] (max <= 1): expected [0, 255]",
                        "warning",
                    )
                )
    return problems


def _plucker_problems(rays: Any, k: Tensor, e: Tensor, where: str, key: str) -> list[Problem]:
    rays = _f64(rays)[:, 0]  # [N, 6, H, W]
    problems = []
    norm = rays[:, :3].norm(dim=1)
    if float((norm - 1).abs().max()) > UNIT_TOL:
        problems.append(
            Problem(
                where,
                key,
                f"ray directions (channels 0-2) not unit length: found lengths in "
                f"[{float(norm.min()):.3g}, {float(norm.max()):.3g}]",
                "warning",
            )
        )
        return problems
    expected = plucker_rays(k, e, rays.shape[-2], rays.shape[-1])
    diff = (rays - expected).abs().flatten(1).amax(dim=1)
    bad = torch.nonzero(diff > PLUCKER_TOL).flatten().tolist()
    if bad:
        problems.append(
            Problem(
                where,
                key,
                f"does not match rays recomputed from the cameras in views {_views(bad)} "
                f"(max difference {float(diff.max()):.3g}; pixel centres at +0.5, d unit, "
                "m = o x d)",
                "warning",
            )
        )
    return problems


GEOMETRY_CHECKS: tuple[Callable[[dict[str, Any], str, set[str | None]], list[Problem]], ...] = (
    check_rotations,
    check_intrinsics,
    check_visibility,
    check_consistency,
)


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
