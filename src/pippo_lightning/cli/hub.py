"""`pippo-hub`: share checkpoints through the Hugging Face Hub.

    pippo-hub push outputs/train/runs/<run>/checkpoints/last.ckpt me/pippo-p3 [--report report.json]
    pippo-hub pull me/pippo-p3 [--out DIR]

The token is HF_TOKEN (or a stored `hf auth login`); HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
apply as in every huggingface_hub tool. A plain argparse CLI: user errors print one ``error:``
line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pippo_lightning.cli.common import run_subcommand


def cmd_push(args: argparse.Namespace) -> int:
    from pippo_lightning.sharing.transfer import push_checkpoint

    url = push_checkpoint(
        args.checkpoint,
        args.repo_id,
        weights=args.weights,
        report=args.report,
        private=args.private,
        commit_message=args.message,
    )
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    print(f"use it with: pippo-generate ckpt=hf://{args.repo_id} photo=me.jpg")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from pippo_lightning.sharing.transfer import pull_checkpoint
    from pippo_lightning.sharing.uris import parse_hf_uri

    repo_id, revision = parse_hf_uri(args.repo_id)
    ckpt = pull_checkpoint(repo_id, args.revision or revision, args.out)
    print(f"checkpoint: {ckpt}")
    print(f"use it with: pippo-generate ckpt={ckpt} photo=me.jpg")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pippo-hub", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("push", help="upload a checkpoint as safetensors + config + card")
    p.set_defaults(handler=cmd_push)
    p.add_argument("checkpoint", help="a Lightning checkpoint (.ckpt) of a pippo-train run")
    p.add_argument("repo_id", help="owner/name of the Hub model repo (created if missing)")
    p.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="ema: the EMA weights sampling uses (default); raw: the trained weights",
    )
    p.add_argument("--report", help="a pippo-eval report.json for the model card")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", help="commit message")

    p = commands.add_parser("pull", help="download a pushed checkpoint as a loadable .ckpt")
    p.set_defaults(handler=cmd_pull)
    p.add_argument("repo_id", help="owner/name or hf://owner/name[@revision]")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--out", help="folder for checkpoints/last.ckpt (default: the hub cache)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
