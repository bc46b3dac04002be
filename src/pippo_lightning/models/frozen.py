"""Frozen pretrained parts (VAE, image encoders) stay out of the host model's checkpoints.

Their weights come from `pretrained`, not from training: saving them would put hundreds of MB
into every checkpoint. A state_dict post-hook drops them, and a load pre-hook fills a
checkpoint's missing entries from the weights already loaded, so strict loading still works.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def keep_out_of_checkpoints(module: nn.Module) -> None:
    """Register the two hooks on `module` (call once, in its __init__)."""
    module.register_state_dict_post_hook(_drop_own_state)
    module.register_load_state_dict_pre_hook(_keep_own_state)


def full_state_dict(module: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """Every parameter and persistent buffer of `module`, bypassing the exclusion."""
    state: dict[str, Tensor] = {}
    module._save_to_state_dict(state, prefix, keep_vars=True)
    for name, child in module.named_children():
        child.state_dict(destination=state, prefix=f"{prefix}{name}.", keep_vars=True)
    return state


def _drop_own_state(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    for key in [key for key in state_dict if key.startswith(prefix)]:
        del state_dict[key]


def _keep_own_state(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for key, value in full_state_dict(module, prefix).items():
        state_dict.setdefault(key, value)
