"""``pippo-data download-samples``: the original release's packed Ava-256 samples, ready to train.

The release ships a handful of samples (``ava_samples/*.npy`` in the Hub dataset
``yashkant/pippo``) in exactly the per-sample layout our loader reads. This fetches them through
huggingface_hub (so HF_TOKEN, HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT behave as everywhere), checks
every file with the schema validator, and lays them out as ``configs/data/ava256_samples.yaml``
expects: ``<target>/train/*.npy`` and ``<target>/val/*.npy``, split deterministically.

The target appears complete or not at all: files are gathered in a hidden staging folder beside
it and renamed into place only after every one validated.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pippo_lightning.checkpoints.atomic import OutputExistsError, atomic_directory
from pippo_lightning.errors import PippoError
from pippo_lightning.sharing.uris import hub_snapshot

SAMPLES_REPO = "yashkant/pippo"
SAMPLES_FOLDER = "ava_samples"
DEFAULT_TARGET = Path("data") / "ava256_samples"
MANIFEST_FILE = "manifest.json"


class DownloadError(PippoError):
    """The samples could not be fetched, or what was fetched is not usable."""


@dataclass
class DownloadResult:
    target: Path
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    warnings: int = 0

    def summary(self) -> str:
        return (
            f"wrote {self.target}: {len(self.train)} train / {len(self.val)} val samples "
            f"({self.warnings} validator warnings)"
        )


def split_samples(names: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) names. Validation takes the names with the smallest SHA-1: the split does
    not depend on listing order, and adding a sample never moves another between splits
    except at the margin. At least one of each when there are two or more samples."""
    if not 0.0 <= val_fraction < 1.0:
        raise DownloadError(f"val fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(set(names), key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    count = round(len(ordered) * val_fraction)
    if val_fraction > 0 and len(ordered) >= 2:
        count = min(max(count, 1), len(ordered) - 1)
    val = set(ordered[:count])
    return sorted(n for n in names if n not in val), sorted(val)


def fetch_snapshot(
    repo_id: str = SAMPLES_REPO, folder: str = SAMPLES_FOLDER, revision: str | None = None
) -> Path:
    """The dataset's ``folder`` in the Hugging Face cache (HF_HOME); one clear error if not."""
    return hub_snapshot(
        repo_id,
        "dataset",
        revision,
        f"{folder}/*",
        "download the samples of",
        "pippo-data download-samples",
    )


def _place(source: Path, destination: Path) -> None:
    """Copy the cached blob (cache entries are symlinks into blobs/). A copy, not a hard link:
    editing a training file in place must never corrupt the Hugging Face cache."""
    shutil.copyfile(source.resolve(), destination)


def download_samples(
    target: str | Path = DEFAULT_TARGET,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    repo_id: str = SAMPLES_REPO,
    folder: str = SAMPLES_FOLDER,
    revision: str | None = None,
) -> DownloadResult:
    """Fetch, validate and lay out the samples under ``target`` (train/, val/, manifest.json)."""
    from pippo_lightning.data.validate import validate_path

    target = Path(target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:  # before any download
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    snapshot = fetch_snapshot(repo_id, folder, revision)
    files = {p.name: p for p in sorted((snapshot / folder).glob("*.npy"))}
    if not files:
        raise DownloadError(
            f"{repo_id} has no {folder}/*.npy files (revision {revision or 'main'})"
        )
    train, val = split_samples(list(files), val_fraction)
    result = DownloadResult(target, train, val)
    with atomic_directory(target, overwrite=overwrite) as staging:
        for split, names in (("train", train), ("val", val)):
            (staging / split).mkdir()
            for name in names:
                _place(files[name], staging / split / name)
        report = validate_path(staging)
        if report.errors:
            shown = "; ".join(str(p).replace(str(staging), str(target)) for p in report.errors[:3])
            raise DownloadError(
                f"downloaded samples failed validation ({len(report.errors)} errors, nothing "
                f"written): {shown}; run `pippo-data validate` on {snapshot / folder}"
            )
        result.warnings = len(report.warnings)
        manifest = {
            "repo_id": repo_id,
            "repo_type": "dataset",
            "folder": folder,
            "commit": snapshot.name,
            "val_fraction": val_fraction,
            "train": train,
            "val": val,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return result


__all__ = [
    "DEFAULT_TARGET",
    "SAMPLES_FOLDER",
    "SAMPLES_REPO",
    "DownloadError",
    "DownloadResult",
    "download_samples",
    "fetch_snapshot",
    "split_samples",
]
