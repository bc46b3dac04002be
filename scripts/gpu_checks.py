"""The GPU targets of issue #14, measured once on a GPU machine (an H200) into $OUT.

    python scripts/gpu_checks.py --out "$OUT"            # on the GPU machine, ~5-8 minutes
    python scripts/gpu_checks.py --dry-run --out /tmp/x  # the same code path on CPU, micro model

Targets (docs/performance.md, "GPU"):
- full P3, bf16, 512 px, 4 views, 50 DDIM steps: <= 5 s
- 48 views at 512 px with the default sampler: <= 60 s
- 1024 px, 4 views, 50 DDIM steps: <= 30 s
- training MFU >= 40 % at 128 px (full model, bf16): FLOPs of one step counted by Lightning's
  `measure_flops` (the same count its ThroughputMonitor uses) over the measured step time, against
  the device's peak bf16 dense throughput (`--peak-tflops`, H200/H100 SXM: 989)

The model and the SDXL VAE architecture have random weights (nothing is downloaded; time does not
depend on the values). Writes gpu_checks.json and gpu_checks.md into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pippo_lightning.benchmarks.training import (
    build_stage,
    save_random_sdxl_vae,
    stage_batch,
    stage_train_step,
    to_device,
)
from pippo_lightning.inference.device import synchronize
from pippo_lightning.stages.precision import autocast_for, resolve_precision

#: (name, image size, views, DDIM steps, target seconds)
SAMPLING_CHECKS = (
    ("p3_512px_4views_50steps", 512, 4, 50, 5.0),
    ("p3_512px_48views_50steps", 512, 48, 50, 60.0),
    ("p3_1024px_4views_50steps", 1024, 4, 50, 30.0),
)
DRY_RUN = {"model": "micro", "scale": 8, "sampling_steps": 2, "train_steps": 2}


def sampling_check(
    vae_dir: Path,
    model: str,
    size: int,
    views: int,
    steps: int,
    device: torch.device,
    precision: str,
    cfg_scale: float,
) -> dict[str, Any]:
    stage = build_stage(vae_dir, model, size, views, ema=False).to(device).eval()
    batch = to_device(stage_batch(views, size, cached=False), device)
    batch["index"] = torch.arange(1)
    sampling = dataclasses.replace(stage.sampling, num_steps=steps, cfg_scale=cfg_scale)
    with autocast_for(device, precision):
        stage.generate(batch, sampling=dataclasses.replace(sampling, num_steps=1))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        stage.generate(batch, sampling=sampling)
        synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del stage
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {"seconds": seconds, "peak_gib": peak, "cfg_scale": cfg_scale}


def mfu_check(
    vae_dir: Path,
    model: str,
    size: int,
    views: int,
    steps: int,
    device: torch.device,
    precision: str,
    peak_tflops: float,
) -> dict[str, Any]:
    from lightning.fabric.utilities.throughput import measure_flops

    step, resolved, stage = stage_train_step(
        vae_dir, model, size, views, cached=True, precision=precision, device=str(device)
    )
    batch = to_device(stage_batch(views, size, cached=True), device)

    def forward() -> torch.Tensor:
        with autocast_for(device, resolved):
            return stage.training_step(batch, 0)

    # measure_flops runs loss_fn(forward_fn()).backward(): forward returns the loss itself
    flops = measure_flops(stage, forward, loss_fn=lambda loss: loss)
    stage.zero_grad(set_to_none=True)
    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    achieved = flops / seconds
    return {
        "flops_per_step": flops,
        "step_s": seconds,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_tflops,
        "mfu": achieved / (peak_tflops * 1e12),
        "precision": resolved,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true", help="CPU, micro model, sizes / 8")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="the stage default: 1.0")
    parser.add_argument("--train-steps", type=int, default=10)
    names = [name for name, *_ in SAMPLING_CHECKS] + ["train_mfu_128px"]
    parser.add_argument("--checks", nargs="+", default=names, choices=names)
    args = parser.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on the GPU machine, or --dry-run to test the script on CPU")
    device = torch.device("cpu" if dry else "cuda")
    precision = "bf16" if not dry else resolve_precision("auto", "cpu")
    model = DRY_RUN["model"] if dry else "full"
    scale = DRY_RUN["scale"] if dry else 1
    results: dict[str, Any] = {
        "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(device),
        "model": model,
        "precision": precision,
        "torch": torch.__version__,
        "checks": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdxl_vae_random_") as vae_dir:
        save_random_sdxl_vae(Path(vae_dir))
        for name, size, views, steps, target in SAMPLING_CHECKS:
            if name not in args.checks:
                continue
            size, steps = size // scale, DRY_RUN["sampling_steps"] if dry else steps
            views = min(views, 6) if dry else views
            print(f"{name}: {size} px, {views} views, {steps} steps ...", flush=True)
            figure = sampling_check(
                Path(vae_dir), model, size, views, steps, device, precision, args.cfg_scale
            )
            figure.update(image_size=size, views=views, steps=steps, target_s=target)
            figure["met"] = None if dry else figure["seconds"] <= target
            results["checks"][name] = figure
            print(f"  {figure['seconds']:.2f} s (target <= {target} s)", flush=True)
        train_steps = DRY_RUN["train_steps"] if dry else args.train_steps
        if "train_mfu_128px" not in args.checks:
            train_steps = 0
        if train_steps:
            print("training MFU at 128 px, 4 views ...", flush=True)
            figure = mfu_check(
                Path(vae_dir),
                model,
                128 // scale * (2 if dry else 1),
                4,
                train_steps,
                device,
                "bf16" if not dry else precision,
                args.peak_tflops,
            )
            figure.update(target_mfu=0.40, met=None if dry else figure["mfu"] >= 0.40)
            results["checks"]["train_mfu_128px"] = figure
            print(
                f"  MFU {figure['mfu']:.1%} ({figure['achieved_tflops']:.1f} TFLOP/s)", flush=True
            )
    (out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
    lines = ["| check | figure | target | met |", "|---|---|---|---|"]
    for name, figure in results["checks"].items():
        if "mfu" in figure:
            value, target = f"MFU {figure['mfu']:.1%}", ">= 40%"
        else:
            value, target = f"{figure['seconds']:.2f} s", f"<= {figure['target_s']} s"
        met = "dry run" if figure["met"] is None else ("yes" if figure["met"] else "no")
        lines.append(f"| {name} | {value} | {target} | {met} |")
    (out / "gpu_checks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out / 'gpu_checks.json'}, {out / 'gpu_checks.md'}")


if __name__ == "__main__":
    main()
