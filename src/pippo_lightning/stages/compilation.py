"""`model.compile=true`: torch.compile a stage's networks in place.

`nn.Module.compile` wraps the module's call, not the module, so the state-dict keys (and thus
checkpoints, EMA updates and `init_from`) stay exactly those of the eager model. The first
train step and the first sampling pay the compilation; later shapes (a smaller last batch, the
validation batch) may compile again.
"""

from __future__ import annotations

from torch import nn


def is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` has been called on this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_networks(*networks: nn.Module) -> None:
    """Compile each network in place (a stage's model and its EMA shadow); once only."""
    for network in networks:
        if not is_compiled(network):
            network.compile()
