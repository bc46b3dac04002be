"""`pippo-convert`: an original-release checkpoint (facebookresearch/pippo) -> a stage checkpoint.

The original's `train.py` saves `{"iteration": int, "model": state_dict, "optimizer": ...}` (no
EMA weights, no epoch). This writes a checkpoint that `PostTrainStage.load_from_checkpoint(path,
compressor=...)` loads, with the model config read from the original YAML or, without it, from
the weight shapes; the diffusion schedule from the YAML or from the `schedule.alphas_cumprod`
buffer the original stores. The optimizer state is not carried over (start fine-tuning with a
fresh AdamW), and the result is a weights checkpoint for `load_from_checkpoint`, not a training
state for `Trainer.fit(ckpt_path=...)`.

    pippo-convert original/checkpoints/100000.pt p3_tiny_128.ckpt --config config/tiny/128_4v_tiny.yml"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pippo_lightning.sharing.original import SDXL_DOWNSAMPLE, convert_original_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pippo-convert",
        description="Convert a checkpoint of the original Pippo release into a "
        "PostTrainStage checkpoint (load with PostTrainStage.load_from_checkpoint).",
    )
    parser.add_argument("src", type=Path, help="original checkpoint (.pt from its train.py)")
    parser.add_argument("dst", type=Path, help="checkpoint to write (.ckpt)")
    parser.add_argument(
        "--config",
        type=Path,
        help="the original YAML (e.g. config/full/512_4v.yml); default: infer from the weights",
    )
    parser.add_argument(
        "--num-views",
        type=int,
        help="training views: N_train of attention biasing is (this + the reference) views of "
        "tokens (default: the original's rule by resolution, e.g. 24 views in all at 128 px)",
    )
    parser.add_argument(
        "--prediction", choices=("eps", "v"), help="network output without --config (default eps)"
    )
    parser.add_argument(
        "--downsample-factor",
        type=int,
        default=SDXL_DOWNSAMPLE,
        help="the VAE's down-sampling, for image_size (default 8: SDXL)",
    )
    parser.add_argument(
        "--model-key", default="model", help="top-level entry holding the weights (default model)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow SRC to unpickle objects that need code (off by default: such a file can "
        "run anything; only for files you trust)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one `error:` line and exit code 2 on bad input."""
    from pippo_lightning.cli.common import USER_ERRORS, fail

    args = build_parser().parse_args(argv)
    try:
        result = convert_original_checkpoint(
            args.src,
            args.dst,
            original_config=args.config,
            num_views=args.num_views,
            prediction=args.prediction,
            downsample_factor=args.downsample_factor,
            model_key=args.model_key,
            trust_pickle=args.trust_pickle,
            overwrite=args.force,
        )
    except (*USER_ERRORS, FileExistsError) as err:
        fail(re.sub(r"\s+", " ", str(err)))
        return
    print("\n".join(result.summary()))


if __name__ == "__main__":
    main(sys.argv[1:])
