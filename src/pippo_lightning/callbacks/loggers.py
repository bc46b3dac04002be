"""Experiment loggers. W&B runs offline unless the user has configured an API key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import WandbLogger

from pippo_lightning.callbacks.tracking import resolve_log_model
from pippo_lightning.extras import require

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_credentials_present() -> bool:
    """True when W&B could authenticate without a prompt (API key in env or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """`auto` → `online` with credentials, else `offline`; WANDB_MODE in the env wins."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        # Lightning's offline WandbLogger sets WANDB_MODE=dryrun (W&B's old name for offline)
        # in its process, which DDP children and later multirun jobs then inherit.
        return "offline" if env_mode == "dryrun" else env_mode
    if mode == "auto":
        return "online" if wandb_credentials_present() else "offline"
    return mode


def wandb_logger(
    save_dir: str | Path,
    project: str = "pippo_lightning",
    name: str | None = None,
    mode: WandbMode = "auto",
    run_id: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | str = "auto",
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger whose files land under `save_dir` and which never asks for a login.

    Offline runs are written to `<save_dir>/wandb/offline-run-*` and can be uploaded later
    with `wandb sync <that dir>`. ``log_model`` `auto`: checkpoints are logged as artifacts
    (aliases `latest`, `best`) when online (pippo_lightning.callbacks.tracking.resolve_log_model).
    """
    require("wandb", "logger=wandb")
    resolved = resolve_wandb_mode(mode)
    if resolved not in {"online", "offline", "disabled"}:
        raise ValueError(
            f"logger.wandb.mode must be auto|online|offline|disabled, got {resolved!r}"
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # No prompt may ever block an unattended run.
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        save_dir=str(save_dir),
        project=project,
        name=name,
        id=run_id,
        offline=resolved == "offline",
        mode=resolved,
        tags=list(tags) if tags else None,
        log_model=resolve_log_model(log_model, resolved),
        **kwargs,
    )


def tensorboard_logger(save_dir: str | Path, name: str = "tensorboard", **kwargs: Any) -> Any:
    """Lightning's TensorBoardLogger, or one error naming the `tensorboard` extra if absent."""
    require("tensorboard", "logger=tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(save_dir), name=name, **kwargs)
