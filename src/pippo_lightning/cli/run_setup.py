"""What `pippo-train` does before building anything (the config's `extras` node).

As in lightning-hydra-template's `extras`: print the composed config as a rich tree (and keep it
in the run directory), insist on tags, and silence the warnings we know to be harmless. Also: a
config group that needs a Hydra plugin (Optuna, submitit) names its extra when the plugin is
missing, instead of Hydra's "Could not find 'hydra/sweeper/optuna'".
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pippo_lightning.extras import require
from pippo_lightning.stages.config import ConfigError

log = logging.getLogger(__name__)

#: The config's top-level nodes, in the order the tree prints them (the rest follow).
PRINT_ORDER = (
    "data",
    "stage",
    "model",
    "compressor",
    "callbacks",
    "logger",
    "trainer",
    "paths",
    "extras",
)

#: (message regex, category) of warnings that say nothing actionable about our runs.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # the synthetic studio renders in the main process; workers would only copy tensors
    (r".*does not have many workers.*", UserWarning),
    # a step-based run: `max_epochs=-1` with `max_steps` is deliberate
    (r".*`max_epochs` was not set.*", UserWarning),
    # Lightning's hint to use `srun`, printed on any SLURM login node
    (r".*The `srun` command is available on your system.*", UserWarning),
    # our IterableDataset-free datamodule: the hint about `__len__` is irrelevant
    (r".*Total length of `.*` across ranks is zero.*", UserWarning),
    # frozen encoders / compressors stay in eval mode on purpose (pippo_lightning.frozen)
    (r".*module\(s\) in eval mode at the start of training.*", UserWarning),
    # Lightning's own use of a torch API torch deprecated; nothing for us to change
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", Warning),
    # torch.utils.checkpoint's reentrant default: we pass use_reentrant explicitly where used
    (r".*use_reentrant parameter should be passed explicitly.*", UserWarning),
)

#: a config-group choice on the command line -> the Hydra plugin module it needs
PLUGIN_GROUPS = {
    "hparams_search": ("hydra_plugins.hydra_optuna_sweeper", "hparams_search (Optuna sweeper)"),
    "hydra/sweeper": ("hydra_plugins.hydra_optuna_sweeper", "hydra/sweeper=optuna"),
    "hardware": ("hydra_plugins.hydra_submitit_launcher", "the SLURM launcher (submitit)"),
}


def require_plugins(argv: Sequence[str]) -> None:
    """Fail with the extra to install when an override picks a group whose plugin is missing."""
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key not in PLUGIN_GROUPS or not value or value == "null":
            continue
        if key == "hardware" and not value.startswith("slurm"):
            continue
        module, purpose = PLUGIN_GROUPS[key]
        require(module, purpose)


def apply_extras(cfg: DictConfig, output_dir: Path | None = None) -> None:
    """Run the config's `extras` (see the module doc); a config without `extras` is left alone."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        ignore_known_warnings()
    if extras.get("enforce_tags"):
        enforce_tags(cfg)
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # the other ranks of a DDP run: same config, printed once
        return
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "tags.log").write_text(
            "\n".join(str(t) for t in cfg.get("tags") or []) + "\n"
        )
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=None if output_dir is None else output_dir)


def ignore_known_warnings() -> None:
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def enforce_tags(cfg: DictConfig) -> None:
    """Tags are how runs are found again in W&B: a run without any is refused, never prompted
    for (an unattended job must not wait on a question)."""
    tags = cfg.get("tags")
    if not tags or not all(str(t).strip() for t in tags):
        raise ConfigError(
            f"tags is {OmegaConf.to_container(tags) if tags is not None else None}: give the run "
            "at least one tag, e.g. tags=[lr_scan] (or extras.enforce_tags=false)"
        )


def config_tree_text(cfg: DictConfig, width: int = 100) -> str:
    """The config as the rich tree :func:`print_config_tree` prints, as plain text."""
    from rich.console import Console

    console = Console(width=width, record=True, file=_Null(), color_system=None)
    console.print(_tree(cfg))
    return console.export_text()


def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config (values resolved where they can be) as a rich tree."""
    from rich.console import Console

    Console().print(_tree(cfg))
    if save_to is not None:
        (save_to / "config_tree.log").write_text(config_tree_text(cfg))


def _tree(cfg: DictConfig):
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        node = cfg[key]
        branch = tree.add(str(key), guide_style="dim")
        if isinstance(node, DictConfig):
            text = OmegaConf.to_yaml(_resolved_where_possible(node))
        else:
            text = str(node)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    return tree


def _resolved_where_possible(node: DictConfig) -> DictConfig:
    """``node`` resolved; interpolations that cannot resolve yet (e.g. `${hydra:...}` outside a
    Hydra run) are kept as written rather than failing the print."""
    try:
        return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    except Exception:  # an unresolvable interpolation: show the config as written
        return node


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
