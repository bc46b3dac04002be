"""The bundle format: what a Hub repo made by :func:`~pippo_lightning.sharing.transfer.push_checkpoint` holds.

Only data, never pickles:

```
model.safetensors   the network's weights (EMA by default), keys as in ``Pippo.state_dict()``
pippo.json          stage class, hyper_parameters, global step, which weights: to rebuild a stage
config.yaml         the resolved training config (the run's .hydra/config.yaml, else hparams)
report.json         the pippo-eval report, when one was given or found
README.md           the model card
```

:func:`checkpoint_from_bundle` turns such a folder back into a Lightning checkpoint dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.sharing.uris import HubError

WEIGHTS_FILE = "model.safetensors"


META_FILE = "pippo.json"


CONFIG_FILE = "config.yaml"


REPORT_FILE = "report.json"


CARD_FILE = "README.md"


#: Bumped when the repo layout changes incompatibly; pull refuses newer layouts.
FORMAT_VERSION = 1


DEFAULT_STAGE_CLASS = "pippo_lightning.stages.PostTrainStage"


def find_report(checkpoint: str | Path) -> Path | None:
    """A pippo-eval report.json stored with the run (beside the checkpoint or in the run dir)."""
    checkpoint = Path(checkpoint).resolve()
    for root in (checkpoint.parent, checkpoint.parent.parent):
        for candidate in (root / REPORT_FILE, root / "eval" / REPORT_FILE):
            if candidate.is_file():
                return candidate
    return None


def stage_class_of(config: Mapping[str, Any] | None) -> str:
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
