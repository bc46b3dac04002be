"""What every Hydra entry point shares: where configs live, how user errors are reported."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pippo_lightning.callbacks.tracking import hydra_choice
from pippo_lightning.compressors.base import CompressorLoadError
from pippo_lightning.data.schema import SampleError
from pippo_lightning.errors import PippoError
from pippo_lightning.stages.config import ConfigError

log = logging.getLogger(__name__)

#: The Hydra configs ship inside the package (pippo_lightning/configs), so an installed
#: pippo-train composes from any directory; the repository's experiments/ links to their
#: `experiment` group, the named recipes.
CONFIG_DIR = Path(str(resources.files("pippo_lightning") / "configs"))
EXPERIMENTS_DIR = CONFIG_DIR / "experiment"


def run_stamp() -> str:
    """The run directory's stamp (`${run_stamp:}` in configs/hydra): `slurm-<job id>` in a SLURM
    job, so a requeued job lands in the same directory and auto-resumes there; else the start
    time. An interactive allocation (job name bash/interactive, as Lightning reads it) is
    several runs, so it gets the time."""
    from pippo_lightning.callbacks.preemption import slurm_job_id

    job_id = slurm_job_id()
    if job_id and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return f"slurm-{job_id}"
    from datetime import datetime

    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


OmegaConf.register_new_resolver("run_stamp", run_stamp, replace=True)
# `${hydra_choice:experiment}`: the W&B group (configs/logger/wandb.yaml)
OmegaConf.register_new_resolver("hydra_choice", hydra_choice, replace=True)

USER_ERRORS: tuple[type[BaseException], ...] = (
    PippoError,
    ConfigError,
    CompressorLoadError,
    SampleError,
    FileNotFoundError,
)


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit non-zero."""
    # one write of the whole line: stderr writes through, so print()'s separate write of the
    # newline would let the ranks of a DDP run, failing together, interleave their lines
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a Hydra task; user errors become one line on stderr and exit code 2."""

    def wrapper(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except USER_ERRORS as err:
            fail(str(err))
        except hydra.errors.InstantiationException as err:
            cause = err.__cause__
            if isinstance(cause, USER_ERRORS):
                fail(str(cause))
            # Hydra wraps the real error over several lines; keep them, on one line.
            fail(" ".join(line.strip() for line in str(err).splitlines() if line.strip()))

    wrapper.__name__ = task.__name__
    wrapper.__doc__ = task.__doc__
    return wrapper


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group such as `callbacks` or `logger` that has a target."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain data, for hyperparameter logging and checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def _config_name(argv: list[str], default: str) -> str:
    for flag in ("--config-name", "-cn"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
        for arg in argv:
            if arg.startswith(f"{flag}="):
                return arg.split("=", 1)[1]
    return default


def check_overrides(default_config: str, argv: list[str] | None = None) -> None:
    """Compose the config once with the command line's plain overrides before Hydra runs, so
    an unknown key or bad value is reported as one line (Hydra's own report spans several).

    Sweep overrides (`a=1,2`) and Hydra's flags are left for Hydra itself to check.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import OmegaConfBaseException

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
        return
    if any(a.split("=")[0] in ("--config-path", "-cp", "--config-dir", "-cd") for a in argv):
        return  # a config outside configs/ (e.g. a DDP child composing its job's saved config)
    candidates = [a for a in argv if not a.startswith("-") and "=" in a]
    flag_values = {
        argv[i + 1]
        for i, a in enumerate(argv[:-1])
        if a in ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")
    }
    candidates = [a for a in candidates if a not in flag_values]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception as err:  # Hydra's own message names the bad token
        fail(" ".join(str(err).split()))
    plain_overrides = [
        o.input_line for o in parsed if not o.is_sweep_override() and not o.is_hydra_override()
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=_config_name(argv, default_config), overrides=plain_overrides)
    except (hydra.errors.HydraException, OmegaConfBaseException) as err:
        detail = str(err.__cause__).splitlines()[0] if err.__cause__ else ""
        fail(" ".join(f"{err} {detail}".split()))
    finally:
        GlobalHydra.instance().clear()


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for DDP ranks > 0 when Hydra is in use.

    Lightning's default re-runs `sys.argv` with `hydra.run.dir` set, which under `--multirun`
    starts a whole new sweep in every child and points them all at the run (not the job)
    directory. Instead each child composes the exact config of its own job — the one Hydra
    saved in the job's output directory — and writes into that same directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    saved = job_dir / (hydra_cfg.output_subdir or ".hydra")
    if not (saved / "config.yaml").is_file():
        raise PippoError(
            f"DDP under Hydra needs the job's saved config at {saved / 'config.yaml'}; "
            "do not set hydra.output_subdir=null for multi-process runs"
        )
    if __main__.__spec__ is None:
        command = [sys.executable, str(Path(sys.argv[0]).resolve())]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += [
        "--config-path",
        str(saved),
        "--config-name",
        "config",
        f"hydra.run.dir={quote_override_value(str(job_dir))}",
        f"hydra.job.name={quote_override_value(f'{hydra_cfg.job.name}_rank{local_rank}')}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def quote_override_value(value: str) -> str:
    """`value` as a quoted Hydra override value, read back verbatim.

    Multirun job directories are named after their overrides (`0_a=1,b=2`); unquoted, the `=`
    and `,` in such a path make the override unparsable. Inside quotes only a quote and the
    backslashes before it (or before the closing quote) need escaping.
    """
    body = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{body}'"


#: What Lightning's DDP launcher exports into the launching process before starting ranks > 0.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def distributed_job_scope() -> Iterator[None]:
    """Undo one job's distributed set-up when it ends, so the next multirun job starts clean.

    Hydra runs the jobs of a local multirun one after another in one process. Lightning leaves
    the process group alive and `LOCAL_RANK` & co. in the environment; the next job would then
    think an external launcher started it, spawn no ranks and talk to the exited ones. Values
    that were there before the job (torchrun, SLURM) are put back as they were.
    """
    before = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def install_ddp_child_command() -> None:
    """Make Lightning's DDP launcher use `ddp_child_command` (see there for why)."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = ddp_child_command


EXIT_USER_ERROR = 2


def run_subcommand(args: Any) -> int:
    """Run an argparse subcommand (`args.handler`) with `--verbose` logging; user errors become
    one `error:` line and exit code 2, as in the Hydra entry points."""
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
