"""`python -m pippo_lightning.cli.reproduce report <run dir>`: score an ablation multirun.

`make reproduce` trains the variants (a Hydra multirun over ``experiment=ablation/...`` into
``<run dir>/jobs``) and then runs this on the run directory; see
:mod:`pippo_lightning.reproduce`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pippo_lightning.cli.common import run_subcommand


def _report(args: argparse.Namespace) -> int:
    from pippo_lightning.reproduce.run import reproduce_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    reproduce_report(run_dir, device=args.device, wandb=not args.no_wandb)
    print((run_dir / "results.md").read_text())
    print(f"written: {run_dir / 'results.json'}, {run_dir / 'results.md'}, {run_dir / 'figures'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pippo-reproduce", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="log progress (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="evaluate every job of a run; write the report")
    report.add_argument("run_dir", help="outputs/reproduce/<run> (holds jobs/<n>/)")
    report.add_argument("--device", default="auto", help="auto | cpu | cuda")
    report.add_argument("--no-wandb", action="store_true", help="write no W&B run")
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_subcommand(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
