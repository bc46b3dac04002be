"""Train-step time and peak memory of the original release against pippo_lightning, one machine.

    python scripts/bench_original.py --original /path/to/pippo [--steps 5] [--out outputs/bench_original]
    make bench-original ORIGINAL=/path/to/pippo

The original is imported from the checkout passed by path (nothing of it is vendored); its model
is built from its config/tiny/128_4v_tiny.yml and trained as its train.py does: AdamW per module,
DenoisingLoss, the grad-norm concatenation it logs, clip_grad_norm 1.0, zero_grad. Both use the
SDXL VAE architecture with the same random weights (diffusers' AutoencoderKL config, saved once to
a temporary directory; nothing is downloaded). Every case runs in its own subprocess so the peak
resident set sizes do not mix. Cases:

- original_vae: the original's step, VAE encode of views, reference and keypoints every step
- original_latents: the same step with encode_image answering from latents computed once
- ours_latents_fp32 / ours_latents: our step from given latents (a latent cache batch), fp32 and
  with `precision: auto`; the VAE encoder is released as it is when training from a cache
- ours_latents_noema: ours_latents without the EMA copy of the weights (the original keeps none)
- ours_vae: our step encoding every step (no cache), `precision: auto`

`--rounds R` runs every case R times, alternating the order, and keeps each case's fastest
median (other processes on a shared machine only ever slow a run down) and its largest peak.

The original needs only what the shared venv already has (diffusers, einops, omegaconf, imageio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from pippo_lightning.benchmarks.training import (
    peak_rss_mb,
    save_random_sdxl_vae,
    stage_train_step,
    time_steps,
)

TINY_CONFIG = "config/tiny/128_4v_tiny.yml"
CASES = (
    "original_vae",
    "original_latents",
    "ours_latents_fp32",
    "ours_latents",
    "ours_latents_noema",
    "ours_vae",
)
#: (numerator case, denominator case, target speed-up) for the report
TARGETS = (
    ("original_latents", "ours_latents", 2.0),
    ("original_vae", "ours_latents", 5.0),
)


# ----------------------------------------------------------------------------- the original
def original_model(
    original: Path, vae_dir: Path, num_views: int, image_size: int
) -> tuple[Any, Any]:
    from omegaconf import OmegaConf

    sys.path.insert(0, str(original))
    from latent_diffusion.utils import load_from_config  # the original's own loader

    config = OmegaConf.load(original / TINY_CONFIG)
    config.consts.num_views = num_views
    # its sizes are constants of the config (128 px); other sizes rewrite them consistently
    for key in ("img_size", "ref_img_size", "multiview_size"):
        config.consts[key] = image_size
    config.consts.latent_size = config.consts.ref_latent_size = image_size // 8
    config.model.compressor = {"pretrained_model_name_or_path": str(vae_dir)}
    # its train.py hands the DictConfig over as is (the model reads `generator.dim`)
    model = load_from_config(config.model)
    model.post_init()
    return model, config


def original_batch(num_views: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The layout of the original's load_batches: [B, NV, T=1, ...], images in 0..255."""
    g = torch.Generator().manual_seed(seed)

    def image(views: int) -> torch.Tensor:
        return torch.rand(1, views, 1, 3, size, size, generator=g) * 255

    def plucker(views: int) -> torch.Tensor:
        return torch.randn(1, views, 1, 6, size, size, generator=g)

    return {
        "image": image(num_views),
        "kpts": image(num_views),
        "ref_image": image(1),
        "ref_kpts": image(1),
        "cam_pose": torch.randn(1, num_views, 1, 16, generator=g),
        "ref_cam_pose": torch.randn(1, 1, 1, 16, generator=g),
        "plucker": plucker(num_views),
        "ref_plucker": plucker(1),
    }


def answer_encodes_from_memory(model: torch.nn.Module) -> None:
    """encode_image returns what it returned for the first input of that shape: the original's
    step with latents given (views, reference and keypoints have distinct shapes)."""
    encode = model.encode_image
    remembered: dict[tuple[int, ...], torch.Tensor] = {}

    def encode_image(image: torch.Tensor) -> torch.Tensor:
        key = tuple(image.shape)
        if key not in remembered:
            remembered[key] = encode(image)
        return remembered[key]

    model.encode_image = encode_image


def original_step_fn(args: argparse.Namespace, vae_dir: Path, latents_given: bool):
    from torch import nn

    torch.manual_seed(0)
    model, config = original_model(Path(args.original), vae_dir, args.views, args.image_size)
    from latent_diffusion.utils import build_optimizer, load_from_config

    optimizer = build_optimizer(config.optimizer, model)
    loss_fn = load_from_config(config.loss)
    batch = original_batch(args.views, args.image_size)
    if latents_given:
        answer_encodes_from_memory(model)

    def step() -> None:
        # train.py, one iteration (use_amp: false; its autocast is CUDA-only anyway)
        preds = model(**batch)
        loss, _ = loss_fn(preds)
        loss.backward()
        grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
        float(torch.cat(grads).norm())
        nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad()

    return step


# ----------------------------------------------------------------------------- runner
def run_case(args: argparse.Namespace) -> dict[str, Any]:
    vae_dir = Path(args.vae_dir)
    precision = None
    if args.case.startswith("original"):
        step = original_step_fn(args, vae_dir, latents_given=args.case == "original_latents")
    else:
        cached = args.case.startswith("ours_latents")
        wanted = "32-true" if args.case.endswith("fp32") else "auto"
        ema = not args.case.endswith("noema")
        step, precision, _ = stage_train_step(
            vae_dir, "tiny", args.image_size, args.views, cached, wanted, ema
        )
    times = time_steps(step, args.warmup, args.steps)
    return {
        "case": args.case,
        "precision": precision or "fp32 (original train.py, use_amp: false)",
        "step_median_s": statistics.median(times),
        "step_all_s": times,
        "peak_rss_mb": peak_rss_mb(),
    }


def markdown(results: dict[str, dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    lines = [
        "| case | precision | train step (median) | peak RSS |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['precision']} | {r['step_median_s']:.2f} s | "
            f"{r['peak_rss_mb'] / 1024:.2f} GiB |"
        )
    lines += ["", "| comparison | ratio | target | met |", "|---|---|---|---|"]
    for r in ratios:
        lines.append(
            f"| {r['name']} | {r['ratio']:.2f}x | {r['target']} | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def compare(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ratios = []
    for slow, fast, target in TARGETS:
        if slow in results and fast in results:
            ratio = results[slow]["step_median_s"] / results[fast]["step_median_s"]
            ratios.append(
                {
                    "name": f"{slow} / {fast} (speed-up)",
                    "ratio": ratio,
                    "target": f">= {target}x",
                    "met": ratio >= target,
                }
            )
    for ours in ("ours_latents", "ours_latents_noema"):
        if "original_vae" in results and ours in results:
            ratio = results[ours]["peak_rss_mb"] / results["original_vae"]["peak_rss_mb"]
            ratios.append(
                {
                    "name": f"peak RSS {ours} / original_vae",
                    "ratio": ratio,
                    "target": "<= 1.0x",
                    "met": ratio <= 1.0,
                }
            )
    return ratios


def run_in_child(
    case: str, vae_dir: str, args: argparse.Namespace, original: Path
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", case, "--vae-dir", vae_dir]
    command += ["--original", str(original), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--views", str(args.views)]
    command += ["--image-size", str(args.image_size)]
    print(f"running {case} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(f"  {case}: {result['step_median_s']:.2f} s, {result['peak_rss_mb']:.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--original", required=True, help="a checkout of facebookresearch/pippo")
    parser.add_argument("--out", default="outputs/bench_original")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    parser.add_argument("--vae-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    original = Path(args.original)
    if not (original / TINY_CONFIG).is_file():
        sys.exit(f"--original {original}: no {TINY_CONFIG} there; pass a pippo checkout")
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sdxl_vae_random_") as vae_dir:
        save_random_sdxl_vae(Path(vae_dir))
        for round_index in range(args.rounds):
            order = args.cases if round_index % 2 == 0 else list(reversed(args.cases))
            for case in order:
                result = run_in_child(case, vae_dir, args, original)
                best = results.get(case)
                if best is None or result["step_median_s"] < best["step_median_s"]:
                    result["peak_rss_mb"] = max(
                        result["peak_rss_mb"], best["peak_rss_mb"] if best else 0.0
                    )
                    results[case] = result
                else:
                    best["peak_rss_mb"] = max(best["peak_rss_mb"], result["peak_rss_mb"])
    results = {case: results[case] for case in args.cases}
    ratios = compare(results)
    report = {
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "config": {
            "model": "tiny (original config/tiny/128_4v_tiny.yml)",
            "image_size": args.image_size,
            "views": args.views,
            "batch_size": 1,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "results": results,
        "ratios": ratios,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_original.json").write_text(json.dumps(report, indent=2))
    table = markdown(results, ratios)
    (out / "bench_original.md").write_text(table + "\n")
    print(table)
    print(f"written: {out / 'bench_original.json'}, {out / 'bench_original.md'}")


if __name__ == "__main__":
    main()
