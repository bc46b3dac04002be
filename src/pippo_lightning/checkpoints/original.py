"""Reading the original release's checkpoints: weights-only unless the user trusts the file."""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.diffusion.attention_biasing import original_train_views
from pippo_lightning.models.original_keys import (
    UNUSED_BLOCK_MODULES,
    OriginalCheckpointError,
    strip_wrapper_prefixes,
)
from pippo_lightning.models.pippo import MODEL_SIZES, PippoConfig, pippo_config

#: Fields the stage derives from the compressor and its own class, never model overrides.
PINNED_OPTIONS = ("latent_size", "latent_channels", "use_cameras", "use_control")


#: What to do about an original checkpoint that weights-only loading refused.
TRUST_PICKLE_ADVICE = (
    "if you trust the file (e.g. you trained it with the original code), rerun with "
    "--trust-pickle (trust_pickle=True), which is off by default because it lets the file run "
    "any code; otherwise re-save its weights as plain tensors"
)


def describe_dropped(sizes: Mapping[str, int]) -> list[str]:
    """Dropped original keys (-> element counts) as one line per reason."""
    groups: dict[str, list[str]] = {}
    for key in sizes:
        groups.setdefault(_drop_reason(key), []).append(key)
    return [
        f"{len(keys)} tensor{'s' * (len(keys) != 1)} "
        f"({sum(sizes[k] for k in keys) / 1e6:.1f}M values): {reason}"
        for reason, keys in groups.items()
    ]


def _drop_reason(key: str) -> str:
    if key.startswith("schedule."):
        return "schedule buffers (rebuilt from the schedule config)"
    if key.startswith("compressor."):
        return "VAE weights (the stage's compressor loads its own)"
    return f"never-used per-block cross-attention weights ({', '.join(UNUSED_BLOCK_MODULES)})"


def load_original_checkpoint(
    path: Path, model_key: str = "model", trust_pickle: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(model state dict, the file's other top-level entries) of an original checkpoint.

    Loads weights-only (checkpointing.load_torch_file): a file that needs code to unpickle is
    refused with an UnsafeCheckpointError before any of it runs. `trust_pickle` (off by
    default, the CLI's --trust-pickle) is the explicit opt-in to unpickle such a file anyway,
    as the original's own loader does. Memory-maps where the file format allows, so a
    1.3B-parameter checkpoint is not read into memory twice. A bare state dict is accepted too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint not found: {path}")
    try:
        if trust_pickle:
            mmap = zipfile.is_zipfile(path)  # legacy (non-zip) files cannot be memory-mapped
            raw = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        else:
            raw = load_torch_file(path, mmap=True, advice=TRUST_PICKLE_ADVICE)
    except (RuntimeError, EOFError, OSError) as err:
        raise OriginalCheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None
    if not isinstance(raw, Mapping):
        raise OriginalCheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    if model_key in raw and isinstance(raw[model_key], Mapping):
        rest = {k: v for k, v in raw.items() if k != model_key}
        return strip_wrapper_prefixes(raw[model_key]), rest
    state = strip_wrapper_prefixes(raw)
    if "generator.pos_embed" in state and all(isinstance(v, Tensor) for v in state.values()):
        return state, {}  # a bare model state dict
    raise OriginalCheckpointError(
        f"{path}: no model state dict under {model_key!r}; top-level entries: {sorted(map(str, raw))}"
    )


def read_original_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The original's `model` config as plain data, from a YAML path or a mapping.

    A full release YAML (`consts`, `model`, `optimizer`, ...) is resolved, then its `model` node
    taken; a mapping that is already the `model` node is used as is.
    """
    from omegaconf import OmegaConf  # deferred: only the --config route needs it
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(source, Mapping):
        config = OmegaConf.create(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"original config not found: {path}")
        config = OmegaConf.load(path)
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as err:
        raise OriginalCheckpointError(f"original config {source}: {err}") from None
    model = plain.get("model", plain) if isinstance(plain, dict) else None
    if not isinstance(model, dict) or "generator" not in model:
        raise OriginalCheckpointError(
            f"original config {source}: no `model.generator` node (is it a release YAML?)"
        )
    return model


def choose_model_size(config: PippoConfig) -> tuple[str, dict[str, Any]]:
    """The named size needing the fewest overrides to give `config`, and those overrides."""
    best: tuple[str, dict[str, Any]] | None = None
    for size in MODEL_SIZES:
        base = pippo_config(size)
        overrides = {
            f.name: plain_data(getattr(config, f.name))
            for f in dataclasses.fields(PippoConfig)
            if f.name not in PINNED_OPTIONS and getattr(config, f.name) != getattr(base, f.name)
        }
        if best is None or len(overrides) < len(best[1]):
            best = (size, overrides)
    assert best is not None
    return best


def config_label(source: str | Path | Mapping[str, Any] | None) -> str:
    if isinstance(source, (str, Path)):
        return str(Path(source).resolve())
    return "<mapping>"


def compact_label(value: Tensor) -> Tensor:
    """A tensor that owns exactly its storage, so torch.save writes no unrelated bytes."""
    if value.is_contiguous() and value.untyped_storage().nbytes() == value.nbytes:
        return value
    return value.contiguous().clone()


def plain_data(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, recursively: what weights-only loading accepts."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def training_views(
    config: PippoConfig,
    num_refs: int,
    num_views: int | None = None,
    model_cfg: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(the stage's num_views, what sets its N_train of attention biasing) for a converted model.

    The stage counts N_train as (num_views + num_refs) views of tokens. By default that is the
    original's count (diffusion.attention_biasing.original_train_views: by resolution, whatever
    its YAML's num_views says), so a converted model biases attention as the original does;
    `num_views` (--num-views) overrides it.
    """
    tokens_per_view = config.tokens_per_view
    if num_views is not None:
        rule = f"--num-views {num_views} + {num_refs} reference view(s)"
    else:
        views, rule = original_train_views(tokens_per_view)
        rule = f"the original's resolution rule: {rule}, whatever its config's num_views"
        if model_cfg is not None and "num_views" in model_cfg:
            rule += f" (here {model_cfg['num_views']})"
        num_views = views - num_refs  # the original's views include the reference(s)
        if num_views < 1:
            raise OriginalCheckpointError(
                f"the original's {views} training views at {tokens_per_view} tokens per view "
                f"leave no target view beside {num_refs} references: pass --num-views"
            )
    if num_views < 1:
        raise OriginalCheckpointError(f"num_views={num_views}: must be >= 1")
    tokens = (num_views + num_refs) * tokens_per_view
    return num_views, {
        "rule": rule,
        "views": num_views + num_refs,
        "tokens_per_view": tokens_per_view,
        "tokens": tokens,
    }
