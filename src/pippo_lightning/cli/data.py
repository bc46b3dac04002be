"""`pippo-data`: the data toolkit (validate, prepare, convert, cache-latents, ...).

A plain argparse CLI (not a training entry point, so no Hydra run directories); compressors for
``cache-latents`` are still built from the Hydra ``_target_`` configs in ``configs/compressor``.
User errors print one ``error:`` line and exit 2; ``validate`` exits 1 when it finds problems.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pippo_lightning.cli.common import run_subcommand
from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require

log = logging.getLogger("pippo_lightning.data")

EXIT_PROBLEMS = 1


# ----------------------------------------------------------------------------- subcommands
def cmd_validate(args: argparse.Namespace) -> int:
    from pippo_lightning.data.validate import iter_report_lines, report_json, validate_path

    report = validate_path(args.paths, jobs=args.jobs)
    if args.json:
        print(report_json(report))
    else:
        lines = list(iter_report_lines(report))
        for line in lines[:-1]:
            if not (args.quiet and line.startswith("warning")):
                print(line)
        print(lines[-1], file=sys.stderr)
    return 0 if report.ok(strict=args.strict) else EXIT_PROBLEMS


def cmd_prepare(args: argparse.Namespace) -> int:
    require("cv2", "pippo-data prepare")
    from pippo_lightning.captures.capture import Conventions
    from pippo_lightning.captures.prepare import prepare
    from pippo_lightning.captures.sample import PrepareConfig

    config = PrepareConfig(
        resolution=args.resolution,
        world=args.world,
        crop=args.crop,
        head_crop_size=args.head_crop_size,
        face_resolution=args.face_resolution,
        face_size=args.face_size,
        anchor_supersample=args.anchor_supersample,
        reference=args.reference,
        ref_in_targets=args.ref_in_targets,
        val_fraction=args.val_fraction,
        val_subjects=tuple(s for s in (args.val_subjects or "").split(",") if s),
        min_views=args.min_views,
        undistort=not args.no_undistort,
        previews=args.previews,
        format=args.format,
        shard_size=args.shard_size,
    )
    declared = [args.extrinsics, args.axes, args.intrinsics_units, args.world_unit]
    conventions = None
    if any(value is not None for value in declared):
        # Flags override what the cameras files declare; unset flags fall back to the defaults.
        conventions = Conventions(
            extrinsics=args.extrinsics or "world_to_camera",
            axes=args.axes or "opencv",
            intrinsics_units=args.intrinsics_units or "pixels",
            world_unit=args.world_unit or "m",
        )
    report = prepare(args.inputs, args.out, config, conventions, overwrite=args.overwrite)
    counts = {split: len(names) for split, names in report.samples.items()}
    print(
        f"wrote {args.out}: {counts['train']} train / {counts['val']} val samples from "
        f"{len(report.subjects)} subjects; {report.views_dropped} views dropped (head not in "
        f"the crop), {len(report.frames_skipped)} frames skipped (< {config.min_views} views), "
        f"{report.missing_images} missing images"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pippo_lightning.data.convert import npy_to_shards, shards_to_npy

    if args.to == "shards":
        npy_to_shards(args.source, args.target, args.shard_size, overwrite=args.overwrite)
    else:
        shards_to_npy(args.source, args.target, overwrite=args.overwrite)
    print(f"wrote {args.target}")
    return 0


def build_compressor(spec: str, overrides: Sequence[str] = ()) -> Any:
    """A compressor from a config name (``identity``, ``space_to_depth``, ``sdxl_vae``) or a
    YAML file with a ``_target_``, plus ``key=value`` overrides."""
    import hydra
    from omegaconf import OmegaConf

    from pippo_lightning.cli.common import CONFIG_DIR

    path = Path(spec)
    if not path.is_file():
        path = CONFIG_DIR / "compressor" / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "compressor").glob("*.yaml"))
            raise PippoError(f"unknown compressor {spec!r}: use one of {known} or a YAML file")
    config = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    if "_target_" not in config:
        raise PippoError(f"{path}: a compressor config needs a _target_")
    try:
        return hydra.utils.instantiate(config)
    except hydra.errors.InstantiationException as error:
        raise PippoError(" ".join(str(error.__cause__ or error).split())) from error


def cmd_cache_latents(args: argparse.Namespace) -> int:
    import torch

    from pippo_lightning.data.latent_cache import cache_latents

    compressor = build_compressor(args.compressor, args.set or [])
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = cache_latents(
        args.root,
        compressor,
        args.resolution,
        splits=args.splits.split(","),
        cache_root=args.out,
        device=device,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(f"latent cache: {target} (compressor {compressor.identity_key()})")
    print(f"use it with: data.latent_cache={target.parent} data.resolution={args.resolution}")
    return 0


def cmd_export_studio(args: argparse.Namespace) -> int:
    from pippo_lightning.captures.capture import Conventions
    from pippo_lightning.studio.export import export_studio_subject
    from pippo_lightning.studio.synthetic import StudioConfig

    config = StudioConfig(resolution=args.resolution, supersample=args.supersample)
    conventions = Conventions(world_unit=args.world_unit)
    for index in range(args.subjects):
        out = Path(args.out) / f"subject_{index:03d}"
        export_studio_subject(
            config, args.seed + index, out, args.camera_format, conventions, args.head
        )
        print(f"wrote {out}")
    return 0


def cmd_scan_photos(args: argparse.Namespace) -> int:
    from pippo_lightning.captures.photo_folder import scan_photos

    scan = scan_photos(args.root, args.check)
    for path, reason in scan.unreadable:
        print(f"error: {path}: {reason}")
    print(scan.summary(), file=sys.stderr)
    return EXIT_PROBLEMS if scan.unreadable else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pippo_lightning.data.benchmark import measure_dataloader
    from pippo_lightning.data.datamodule import MultiViewDataModule

    datamodule = MultiViewDataModule(
        root=args.root,
        num_views=args.num_views,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=args.pin_memory,
        persistent_workers=args.workers > 0,
        cache_in_memory=False,
        latent_cache=args.latent_cache,
    )
    result = measure_dataloader(datamodule, args.batches)
    print(json.dumps(result.__dict__, indent=2))
    return 0


def cmd_bench_studio(args: argparse.Namespace) -> int:
    from pippo_lightning.studio.timing import measure_studio_render

    result = measure_studio_render(args.resolution, args.subjects, args.supersample)
    print(json.dumps(result.__dict__, indent=2))
    return 0


# ----------------------------------------------------------------------- download-samples
def cmd_download_samples(args: argparse.Namespace) -> int:
    """The original release's Ava-256 samples from the Hub, validated and split (issue #8)."""
    from pippo_lightning.sharing.download import download_samples

    result = download_samples(
        args.out,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
        repo_id=args.repo,
        revision=args.revision,
    )
    print(result.summary())
    print(f"train on them with: pippo-train data=ava256_samples data.root={args.out}")
    return 0


# ----------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pippo-data", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    p = command("validate", cmd_validate, "report every problem in every sample file")
    p.add_argument("paths", nargs="+", help=".npy files, shard directories or folders of them")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="do not print warnings")
    p.add_argument("--jobs", type=int, default=1, help="processes (large datasets)")

    p = command("prepare", cmd_prepare, "turn calibrated multi-view captures into samples")
    p.add_argument("inputs", nargs="+", help="capture directories or folders of captures")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument(
        "--world",
        choices=("canonical", "as_is"),
        default="canonical",
        help="canonical: per sample, head at the origin, +y up, facing +z",
    )
    p.add_argument("--crop", choices=("center", "head"), default="center")
    p.add_argument("--head-crop-size", type=float, default=1.0, help="metres (crop=head)")
    p.add_argument("--face-resolution", type=int, default=128, help="0: no face crop")
    p.add_argument("--face-size", type=float, default=0.35, help="metres")
    p.add_argument("--anchor-supersample", type=int, default=2)
    p.add_argument("--reference", help="reference camera name (default: the most frontal)")
    p.add_argument("--ref-in-targets", action="store_true")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-subjects", help="comma-separated subjects for validation")
    p.add_argument("--min-views", type=int, default=2)
    p.add_argument("--no-undistort", action="store_true")
    p.add_argument("--previews", type=int, default=4, help="preview images per split")
    p.add_argument("--format", choices=("npy", "shards"), default="npy")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--extrinsics", choices=("world_to_camera", "camera_to_world"))
    p.add_argument("--axes", choices=("opencv", "opengl"))
    p.add_argument("--intrinsics-units", choices=("pixels", "normalized"))
    p.add_argument("--world-unit", choices=("m", "cm", "mm"))
    p.add_argument("--overwrite", action="store_true")

    p = command("convert", cmd_convert, "convert between .npy samples and shard directories")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--to", choices=("shards", "npy"), required=True)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")

    p = command("cache-latents", cmd_cache_latents, "encode samples once with a compressor")
    p.add_argument("root", help="dataset root with train/ and val/")
    p.add_argument("--compressor", default="sdxl_vae", help="config name or YAML with _target_")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="compressor override")
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--splits", default="train,val")
    p.add_argument("--out", help="cache root (default: <root>/latents)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--overwrite", action="store_true")

    p = command("export-studio", cmd_export_studio, "write studio subjects as plain captures")
    p.add_argument("out")
    p.add_argument("--subjects", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--supersample", type=int, default=1)
    p.add_argument("--camera-format", choices=("json", "krt"), default="json")
    p.add_argument("--world-unit", choices=("m", "cm", "mm"), default="m")
    p.add_argument("--head", choices=("pose", "keypoints", "none"), default="pose")

    p = command("scan-photos", cmd_scan_photos, "count photos and list unreadable ones")
    p.add_argument("root")
    p.add_argument("--check", choices=("header", "decode"), default="decode")

    p = command("bench", cmd_bench, "samples/s of a multi-view dataset's train loader")
    p.add_argument("root")
    p.add_argument("--num-views", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--pin-memory", action="store_true")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--latent-cache")

    p = command("bench-studio", cmd_bench_studio, "seconds to render synthetic-studio subjects")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--subjects", type=int, default=3)
    p.add_argument("--supersample", type=int, default=1)

    p = command(
        "download-samples",
        cmd_download_samples,
        "fetch the original release's Ava-256 samples from the Hugging Face Hub",
    )
    p.add_argument("--out", default="data/ava256_samples", help="dataset root to create")
    p.add_argument("--val-fraction", type=float, default=0.1, help="samples held out for val")
    p.add_argument("--repo", default="yashkant/pippo", help="Hub dataset holding ava_samples/")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_subcommand(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
