"""Sharing checkpoints: the Hugging Face Hub (push / pull / ``hf://`` URIs) and W&B artifacts.

A Hub repo made by :func:`push_checkpoint` holds only data, never pickles:

```
model.safetensors   the network's weights (EMA by default), keys as in ``Pippo.state_dict()``
pippo.json          stage class, hyper_parameters, global step, which weights: to rebuild a stage
config.yaml         the resolved training config (the run's .hydra/config.yaml, else hparams)
report.json         the pippo-eval report, when one was given or found
README.md           the model card
```

:func:`pull_checkpoint` turns such a repo back into a Lightning checkpoint plus a run-like
``.hydra/config.yaml`` next to it, so ``pippo-generate`` / ``pippo-eval`` rebuild the compressor
the run was trained with exactly as for a local run. Every checkpoint this module reads is loaded
with ``weights_only=True`` or from safetensors: a pickle that needs arbitrary code is refused.

Errors of the Hub (offline mode, a rejected token, no network) become one :class:`HubError`
line that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor

from pippo_lightning.checkpointing import UnsafeCheckpointError, load_torch_file
from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require
from pippo_lightning.metrics.report import metrics_table
from pippo_lightning.progress import quiet_hub_bars

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "pippo.json"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
CARD_FILE = "README.md"
#: Bumped when the repo layout changes incompatibly; pull refuses newer layouts.
FORMAT_VERSION = 1
DEFAULT_STAGE_CLASS = "pippo_lightning.stages.PostTrainStage"

Weights = Literal["ema", "raw"]
#: Where each kind of weights sits in a stage's state_dict (see stages/base.py).
WEIGHT_PREFIXES: dict[str, str] = {"ema": "ema.shadow.", "raw": "model."}


class HubError(PippoError):
    """The Hub could not be reached, refused us, or holds something we cannot use."""


# ---------------------------------------------------------------------------- hf:// URIs
def is_hf_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """``hf://owner/name[@revision]`` → (repo id, revision or None)."""
    body = uri[len(HF_SCHEME) :] if uri.startswith(HF_SCHEME) else uri
    body, _, revision = body.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", body):
        raise HubError(f"{uri!r} is not a Hub model: expected hf://owner/name[@revision]")
    return body, revision or None


# ----------------------------------------------------------------------------- Hub errors
def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(error: BaseException | None) -> bool:
    # huggingface_hub wraps httpx; match by name so a renamed transport module cannot break us.
    while error is not None:
        if any(
            name in type(error).__name__
            for name in ("ConnectError", "Timeout", "ConnectionError", "NetworkError")
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def explain_hub_error(error: BaseException, action: str, repo_id: str) -> str:
    """One line for a huggingface_hub error: what went wrong and what to do about it."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = error.__cause__
    if isinstance(error, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled):
        return (
            f"cannot {action} {repo_id}: HF_HUB_OFFLINE=1 and it is not in the Hugging Face cache "
            f"({_cache_hint()}); unset HF_HUB_OFFLINE on a machine with network access"
        )
    if _status(error) == 401 or _status(cause) == 401:
        return (
            f"cannot {action} {repo_id}: the Hub at {hub_endpoint()} rejected the token (401); "
            "set HF_TOKEN to a valid token (https://huggingface.co/settings/tokens) or run "
            "`hf auth login` (for a public repo, unset HF_TOKEN instead)"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"cannot {action} {repo_id}: no such revision on the Hub"
    if isinstance(error, RepositoryNotFoundError) or _status(error) == 404:
        return (
            f"cannot {action} {repo_id}: no such repository on the Hub at {hub_endpoint()} "
            "(a private one needs HF_TOKEN with read access)"
        )
    if _is_connection_error(error) or isinstance(error, LocalEntryNotFoundError):
        return (
            f"cannot {action} {repo_id}: the Hub at {hub_endpoint()} is unreachable and the "
            f"files are not in the Hugging Face cache ({_cache_hint()}); check the network or "
            "proxy, or set HF_ENDPOINT to a reachable mirror"
        )
    if isinstance(error, HfHubHTTPError):
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"cannot {action} {repo_id}: the Hub answered {_status(error)}: {first}"
    return f"cannot {action} {repo_id}: {type(error).__name__}: {error}"


def _cache_hint() -> str:
    from huggingface_hub import constants

    return f"HF_HOME={constants.HF_HOME}"


@contextmanager
def hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub / transport exceptions raised in the block into one HubError."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as error:
        hub_error = isinstance(
            error, HfHubHTTPError | LocalEntryNotFoundError | OfflineModeIsEnabled
        )
        if not hub_error and not _is_connection_error(error):
            raise  # a local file problem (huggingface_hub's errors are OSErrors too): as is
        raise HubError(explain_hub_error(error, action, repo_id)) from error
    except Exception as error:
        if _is_connection_error(error):  # httpx errors are not OSErrors
            raise HubError(explain_hub_error(error, action, repo_id)) from error
        raise


# ------------------------------------------------------------------------- safe loading
def safe_torch_load(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict, loaded weights-only (checkpointing.load_torch_file): a pickle that
    needs code to unpickle is refused (UnsafeCheckpointError) before any of it runs."""
    path = Path(path)
    try:
        value = load_torch_file(path)
    except (zipfile.BadZipFile, EOFError, RuntimeError) as error:
        raise PippoError(f"{path} is not a readable checkpoint ({type(error).__name__})") from error
    if not isinstance(value, dict):
        raise PippoError(f"{path} is not a checkpoint (holds a {type(value).__name__})")
    return value


# ----------------------------------------------------------------------- checkpoint export
def network_weights(
    checkpoint: Mapping[str, Any], weights: Weights
) -> tuple[dict[str, Tensor], str]:
    """The network's weights (``Pippo.state_dict()`` keys) of a Lightning checkpoint, and
    which ones they are. EMA falls back to the trained weights when the run kept no EMA."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise PippoError("not a Lightning checkpoint (no state_dict)")
    chosen = weights
    if weights == "ema" and not any(k.startswith(WEIGHT_PREFIXES["ema"]) for k in state):
        log.warning("checkpoint has no EMA weights (ema disabled); sharing the trained weights")
        chosen = "raw"
    prefix = WEIGHT_PREFIXES[chosen]
    # clone: safetensors refuses tensors that share storage or are not contiguous.
    tensors = {
        key[len(prefix) :]: value.detach().contiguous().clone()
        for key, value in state.items()
        if key.startswith(prefix) and isinstance(value, Tensor)
    }
    if not tensors:
        raise PippoError(f"checkpoint has no '{prefix}*' weights in its state_dict")
    return tensors, chosen


def run_config_path(checkpoint: str | Path) -> Path | None:
    """The run's resolved config: <run>/.hydra/config.yaml for <run>/checkpoints/x.ckpt, or
    a .hydra/ right beside the checkpoint (a pulled checkpoint's own layout)."""
    checkpoint = Path(checkpoint).resolve()
    for root in (checkpoint.parent, checkpoint.parent.parent):
        candidate = root / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def find_report(checkpoint: str | Path) -> Path | None:
    """A pippo-eval report.json stored with the run (beside the checkpoint or in the run dir)."""
    checkpoint = Path(checkpoint).resolve()
    for root in (checkpoint.parent, checkpoint.parent.parent):
        for candidate in (root / REPORT_FILE, root / "eval" / REPORT_FILE):
            if candidate.is_file():
                return candidate
    return None


def _stage_class(config: Mapping[str, Any] | None) -> str:
    """The LightningModule class of a run: its config's stage target (train configs name it)."""
    stage = (config or {}).get("stage")
    if isinstance(stage, Mapping) and isinstance(stage.get("_target_"), str):
        return stage["_target_"]
    if isinstance((config or {}).get("stage_class"), str):
        return str(config["stage_class"])  # type: ignore[index]
    return DEFAULT_STAGE_CLASS


@dataclass(frozen=True)
class Bundle:
    """What a push uploads, written to a folder, and what the model card was made of."""

    folder: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    report: dict[str, Any] | None


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
        "stage_class": _stage_class(config),
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


# ------------------------------------------------------------------------------ model card
def _data_line(config: Mapping[str, Any]) -> str:
    data = config.get("data")
    if not isinstance(data, Mapping):
        return "not recorded"
    if data.get("synthetic"):
        studio = data["synthetic"]
        return (
            f"synthetic studio ({studio.get('num_train_subjects')} train / "
            f"{studio.get('num_val_subjects')} val subjects)"
        )
    return f"`{data.get('root')}` ({str(data.get('_target_', '')).rsplit('.', 1)[-1]})"


def _compressor_line(config: Mapping[str, Any]) -> str:
    node = config.get("compressor")
    if not isinstance(node, Mapping):
        return "not recorded"
    args = ", ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    return f"`{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({args})`"


def model_card(
    repo_id: str,
    meta: Mapping[str, Any],
    config: Mapping[str, Any],
    report: Mapping[str, Any] | None,
) -> str:
    """The README.md of a pushed checkpoint: what it is, how it was trained and scored, how to
    run it. Metadata the Hub reads goes in the YAML front matter."""
    hp = meta.get("hyper_parameters") or {}
    stage = str(meta["stage_class"]).rsplit(".", 1)[-1]
    lines = [
        "---",
        "library_name: pippo_lightning",
        "tags: [pippo, multi-view, diffusion, novel-view-synthesis, pytorch-lightning]",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        "A [Pippo](https://arxiv.org/abs/2502.07785) multi-view diffusion checkpoint trained "
        "with `pippo_lightning`: one photo of a person in, consistent views out.",
        "",
        "| | |",
        "|---|---|",
        f"| stage | `{stage}` |",
        f"| model size | {hp.get('model_size', 'n/a')} |",
        f"| resolution | {hp.get('image_size', 'n/a')} px |",
        f"| views per sample (training) | {hp.get('num_views', 'n/a')} |",
        f"| training steps | {meta.get('global_step')} |",
        f"| weights | {'EMA' if meta.get('weights') == 'ema' else 'trained (no EMA)'} |",
        f"| data | {_data_line(config)} |",
        f"| compressor | {_compressor_line(config)} |",
        "",
    ]
    lines += _metrics_section(report)
    lines += [
        "## Use it",
        "",
        "```bash",
        f"pippo-generate ckpt=hf://{repo_id} photo=me.jpg num_views=24",
        f"pippo-eval ckpt=hf://{repo_id}",
        f"pippo-hub pull {repo_id} --out checkpoints/{repo_id.split('/')[-1]}  # a local copy",
        "```",
        "",
        "`hf://` checkpoints are pulled into the Hugging Face cache (HF_HOME) and loaded from "
        "safetensors. The compressor is not part of the weights: a pulled copy keeps the run's "
        "`config.yaml` as `.hydra/config.yaml` beside `checkpoints/last.ckpt`, where "
        "`compressor_from=run` finds it; otherwise pass the compressor above as overrides.",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS_FILE}`: the network's weights",
        f"- `{META_FILE}`: stage class and hyper-parameters, to rebuild the stage",
        f"- `{CONFIG_FILE}`: the resolved training config ({meta.get('config_source')})",
    ]
    if report is not None:
        lines.append(f"- `{REPORT_FILE}`: the pippo-eval report the metrics above come from")
    return "\n".join(lines) + "\n"


def _metrics_section(report: Mapping[str, Any] | None) -> list[str]:
    if report is None:
        return ["## Evaluation", "", "No pippo-eval report was attached.", ""]
    data = report.get("data", {})
    lines = [
        "## Evaluation (pippo-eval)",
        "",
        f"{data.get('subjects')} subject(s) of the `{data.get('split')}` split, "
        f"{data.get('views_per_subject')} views each at {data.get('image_size')} px"
        f" (checkpoint step {report.get('global_step')}).",
        "",
        *metrics_table(report),
    ]
    return [*lines, ""]


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
            info = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=staging,
                commit_message=commit_message
                or f"pippo_lightning checkpoint, step {bundle.meta['global_step']}",
            )
    return str(getattr(info, "commit_url", info))


def hub_cache_root() -> Path:
    """Where pulled checkpoints are rebuilt (one folder per repo and commit)."""
    base = os.environ.get("PIPPO_HUB_CACHE")
    if base:
        return Path(base)
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return xdg / "pippo_lightning" / "hub"


def download_repo(repo_id: str, revision: str | None = None) -> Path:
    """The repo's files in the Hugging Face cache (HF_HOME; works offline once cached)."""
    require("huggingface_hub", "downloading from the Hugging Face Hub")
    quiet_hub_bars()
    from huggingface_hub import snapshot_download

    with hub_errors("download", repo_id):
        return Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type="model",
                revision=revision,
                allow_patterns=[WEIGHTS_FILE, META_FILE, CONFIG_FILE, REPORT_FILE, CARD_FILE],
            )
        )


def checkpoint_from_bundle(folder: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint dict rebuilt from a pushed repo's files (safetensors + JSON).

    The shared weights fill both ``model.*`` and, when the stage keeps an EMA, ``ema.shadow.*``,
    so sampling (which prefers the EMA) runs exactly the weights that were pushed.
    """
    import lightning
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (WEIGHTS_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{folder} is not a pippo_lightning checkpoint repo (no {missing[0]})")
    meta = json.loads((folder / META_FILE).read_text())
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise HubError(
            f"{folder} uses checkpoint format {meta['format_version']}; this pippo_lightning "
            f"reads up to {FORMAT_VERSION}: upgrade it"
        )
    weights = load_file(str(folder / WEIGHTS_FILE))
    hparams = meta.get("hyper_parameters") or {}
    state: dict[str, Tensor] = {f"model.{k}": v for k, v in weights.items()}
    if (hparams.get("ema") or {}).get("enabled", False):
        state.update({f"ema.shadow.{k}": v.clone() for k, v in weights.items()})
        state["ema.num_updates"] = torch.tensor(int(meta.get("global_step", 0)), dtype=torch.long)
    return {
        "state_dict": state,
        "hyper_parameters": hparams,
        "hparams_name": "kwargs",
        "global_step": int(meta.get("global_step", 0)),
        "epoch": int(meta.get("epoch", 0)),
        "pytorch-lightning_version": lightning.__version__,
        "pippo_hub": {"stage_class": meta.get("stage_class"), "weights": meta.get("weights")},
    }


def pull_checkpoint(
    repo_id: str, revision: str | None = None, out: str | Path | None = None
) -> Path:
    """Download a pushed repo and rebuild ``<out>/checkpoints/last.ckpt`` (+ ``.hydra/``).

    Default ``out``: ``hub_cache_root()/<owner>--<name>/<commit>``; reused when complete, so
    ``hf://`` checkpoints cost one download. Written in a staging folder and renamed: a reader
    never sees a half-written checkpoint.
    """
    from pippo_lightning.data.atomic import atomic_directory

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


def offline_artifacts(path: str | Path) -> list[dict[str, Any]]:
    """The artifacts an offline W&B run recorded (name, type, files with their local paths),
    read from its transaction log like :func:`pippo_lightning.loggers.read_offline_run`."""
    from wandb.proto import wandb_internal_pb2

    from pippo_lightning.loggers import _log_records

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("**/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no offline W&B run (run-*.wandb) under {path}")
    found = []
    for raw in _log_records(files[-1].read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "artifact":
            continue
        art = record.artifact
        found.append(
            {
                "name": art.name,
                "type": art.type,
                "files": {e.path: e.local_path for e in art.manifest.contents},
                "metadata": json.loads(art.metadata or "{}"),
            }
        )
    return found


__all__ = [
    "HF_SCHEME",
    "Bundle",
    "HubError",
    "UnsafeCheckpointError",
    "build_bundle",
    "checkpoint_from_bundle",
    "explain_hub_error",
    "hub_errors",
    "is_hf_uri",
    "log_artifacts",
    "log_artifacts_if_enabled",
    "model_card",
    "network_weights",
    "offline_artifacts",
    "parse_hf_uri",
    "pull_checkpoint",
    "push_checkpoint",
    "resolve_checkpoint",
    "safe_torch_load",
]
