"""Push a checkpoint to the Hugging Face Hub and pull it back (``hf://`` URIs resolve here).

:func:`pull_checkpoint` rebuilds a Lightning checkpoint plus a run-like ``.hydra/config.yaml`` next
to it, so ``pippo-generate`` / ``pippo-eval`` rebuild the compressor the run was trained with
exactly as for a local run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from pippo_lightning.checkpoints.reading import (
    Weights,
    network_weights,
    run_config_path,
    safe_torch_load,
)
from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require
from pippo_lightning.progress import progress_bar, quiet_hub_bars
from pippo_lightning.sharing.bundle import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    META_FILE,
    REPORT_FILE,
    WEIGHTS_FILE,
    Bundle,
    checkpoint_from_bundle,
    find_report,
    stage_class_of,
)
from pippo_lightning.sharing.card import model_card
from pippo_lightning.sharing.uris import (
    HubError,
    hub_cache_root,
    hub_errors,
    hub_offline,
    hub_snapshot,
    is_hf_uri,
    parse_hf_uri,
)


def build_bundle(
    checkpoint: str | Path,
    folder: str | Path,
    repo_id: str,
    weights: Weights = "ema",
    report: str | Path | None = None,
) -> Bundle:
    """Write the repo's files for ``checkpoint`` into ``folder`` (see the module doc)."""
    from safetensors.torch import save_file

    checkpoint, folder = Path(checkpoint), Path(folder)
    if not checkpoint.is_file():
        raise PippoError(f"checkpoint {checkpoint} does not exist")
    state = safe_torch_load(checkpoint)
    tensors, chosen = network_weights(state, weights)
    hparams = dict(state.get("hyper_parameters") or {})
    config_path = run_config_path(checkpoint)
    config = (
        yaml.safe_load(config_path.read_text()) if config_path is not None else {"stage": hparams}
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "stage_class": stage_class_of(config),
        "weights": chosen,
        "global_step": int(state.get("global_step") or 0),
        "epoch": int(state.get("epoch") or 0),
        "hyper_parameters": hparams,
        "config_source": "run" if config_path is not None else "hyper_parameters",
        "source_checkpoint": checkpoint.name,
    }
    report_path = Path(report) if report is not None else find_report(checkpoint)
    if report is not None and not report_path.is_file():  # type: ignore[union-attr]
        raise PippoError(f"report {report} does not exist")
    report_data = json.loads(report_path.read_text()) if report_path is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "weights": chosen})
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    if report_data is not None:
        (folder / REPORT_FILE).write_text(json.dumps(report_data, indent=2) + "\n")
    (folder / CARD_FILE).write_text(model_card(repo_id, meta, config, report_data))
    return Bundle(folder, meta, config, report_data)


# -------------------------------------------------------------------------------- push / pull
def push_checkpoint(
    checkpoint: str | Path,
    repo_id: str,
    weights: Weights = "ema",
    report: str | Path | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Upload ``checkpoint`` as a Hub model repo (created if needed); returns the commit URL.

    The token comes from HF_TOKEN or the stored login, as everywhere in huggingface_hub.
    """
    require("huggingface_hub", "pippo-hub push")
    quiet_hub_bars()
    from huggingface_hub import HfApi

    if hub_offline():
        raise HubError(f"cannot push to {repo_id}: HF_HUB_OFFLINE=1; unset it to upload")
    with tempfile.TemporaryDirectory(prefix="pippo-hub-push-") as staging:
        bundle = build_bundle(checkpoint, staging, repo_id, weights, report)
        api = HfApi()
        with hub_errors("push to", repo_id):
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = upload_with_progress(
                api,
                repo_id,
                Path(staging),
                commit_message or f"pippo_lightning checkpoint, step {bundle.meta['global_step']}",
            )
    return str(getattr(info, "commit_url", info))


def upload_with_progress(api: Any, repo_id: str, folder: Path, commit_message: str) -> Any:
    """``upload_folder`` with a progress bar (bytes, ETA): each file's content goes up on its
    own (``preupload_lfs_files``: LFS / Xet for the large ones), then one commit adds them all
    (small files travel inline in it). Returns huggingface_hub's CommitInfo."""
    from huggingface_hub import CommitOperationAdd

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
        for p in files
    ]
    sizes = [p.stat().st_size for p in files]
    with progress_bar(f"upload {repo_id}", sum(sizes), unit="B") as bar:
        for operation, size in zip(operations, sizes):
            api.preupload_lfs_files(repo_id, additions=[operation], repo_type="model")
            bar.advance(size)
        return api.create_commit(
            repo_id, operations, commit_message=commit_message, repo_type="model"
        )


def download_repo(repo_id: str, revision: str | None = None) -> Path:
    """The repo's files in the Hugging Face cache (HF_HOME; works offline once cached)."""
    return hub_snapshot(
        repo_id,
        "model",
        revision,
        [WEIGHTS_FILE, META_FILE, CONFIG_FILE, REPORT_FILE, CARD_FILE],
        "download",
        "downloading from the Hugging Face Hub",
    )


def pull_checkpoint(
    repo_id: str, revision: str | None = None, out: str | Path | None = None
) -> Path:
    """Download a pushed repo and rebuild ``<out>/checkpoints/last.ckpt`` (+ ``.hydra/``).

    Default ``out``: ``hub_cache_root()/<owner>--<name>/<commit>``; reused when complete, so
    ``hf://`` checkpoints cost one download. Written in a staging folder and renamed: a reader
    never sees a half-written checkpoint.
    """
    from pippo_lightning.checkpoints.atomic import atomic_directory

    snapshot = download_repo(repo_id, revision)
    target = (
        Path(out)
        if out is not None
        else (hub_cache_root() / repo_id.replace("/", "--") / snapshot.name)
    )
    ckpt = target / "checkpoints" / "last.ckpt"
    if out is None and ckpt.is_file():
        return ckpt
    if target.is_dir() and any(target.iterdir()) and not (target / META_FILE).is_file():
        # Only a previous pull is replaced: never swap out a folder of the user's own files.
        raise PippoError(f"{target} exists and is not a pulled checkpoint; choose an empty --out")
    checkpoint = checkpoint_from_bundle(snapshot)
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "checkpoints").mkdir()
        torch.save(checkpoint, staging / "checkpoints" / "last.ckpt")
        if (snapshot / CONFIG_FILE).is_file():
            (staging / ".hydra").mkdir()
            shutil.copyfile(snapshot / CONFIG_FILE, staging / ".hydra" / "config.yaml")
        for name in (REPORT_FILE, CARD_FILE, META_FILE):
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, staging / name)
    return ckpt


def resolve_checkpoint(ckpt: str | Path) -> Path:
    """A local checkpoint path for ``ckpt``: ``hf://owner/name[@rev]`` is pulled first."""
    if is_hf_uri(str(ckpt)):
        repo_id, revision = parse_hf_uri(str(ckpt))
        return pull_checkpoint(repo_id, revision)
    return Path(ckpt)
