"""`make bench-scale`: how train-step time and peak memory grow with views and resolution.

Each (views, resolution) point runs in its own process (so each peak RSS is its own): the P3
stage's training step from latents (as from a latent cache; SDXL VAE geometry, 8x down), with
`precision: auto`. Beside the measurements it draws the expected curve, fitted to them:

    step time  = c + a * T + b * T^2     (T: tokens in the sequence, (views + 1) * per view)
    peak RSS   = c' + a' * T

c is the work proportional to the weights only (optimizer, EMA, gradient clipping), a * T the
linear layers, norms and MLPs, b * T^2 the attention scores; activations grow linearly in T
(the fused attention keeps no T^2 matrix).

    python -m pippo_lightning.cli.bench_scale --out docs/figures [--model micro]
        [--views 2 4 8 16] [--resolutions 64 128 256] [--steps 3]
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

import numpy as np

PATCH = 2  # the DiT's patch size on latents (every model size)


def tokens(num_views: int, image_size: int, downsample: int = 8, patch: int = PATCH) -> int:
    """Tokens of one training sequence: target views + the reference, each (H/8/patch)^2."""
    per_view = (image_size // downsample // patch) ** 2
    return (num_views + 1) * per_view


def fit_cost_model(token_counts: list[int], values: list[float], quadratic: bool) -> list[float]:
    """Least-squares coefficients [c, a(, b)] of c + a*T (+ b*T^2), each clipped at >= 0 and
    the rest refitted (a negative share of time or memory has no meaning)."""
    t = np.asarray(token_counts, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    columns = [np.ones_like(t), t] + ([t**2] if quadratic else [])
    design = np.stack(columns, axis=1)
    active = list(range(design.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(design[:, active], y, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            break
        del active[int(np.argmin(coef))]
    full = [0.0] * design.shape[1]
    for index, value in zip(active, coef, strict=True):
        full[index] = max(float(value), 0.0)
    return full


def predict(coefficients: list[float], token_counts: np.ndarray | list[int]) -> np.ndarray:
    t = np.asarray(token_counts, dtype=np.float64)
    return sum(c * t**power for power, c in enumerate(coefficients))


def measure_point(args: argparse.Namespace) -> dict[str, Any]:
    """One point, in this (child) process."""
    import torch

    from pippo_lightning.benchmarks.training import peak_rss_mb, stage_train_step, time_steps

    step, precision, stage = stage_train_step(
        Path(args.vae_dir), args.model, args.point_resolution, args.point_views
    )
    times = time_steps(step, args.warmup, args.steps)
    return {
        "views": args.point_views,
        "resolution": args.point_resolution,
        "tokens": tokens(args.point_views, args.point_resolution),
        "precision": precision,
        "step_median_s": statistics.median(times),
        "step_all_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "parameters": stage.parameter_counts()["total"],
        "torch_threads": torch.get_num_threads(),
    }


def run_point(views: int, resolution: int, vae_dir: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "pippo_lightning.cli.bench_scale", "--model", args.model]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--vae-dir", vae_dir]
    command += ["--point-views", str(views), "--point-resolution", str(resolution)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"point views={views} resolution={resolution} failed:\n{done.stderr[-4000:]}")
    point = json.loads(lines[-1][len("RESULT ") :])
    print(
        f"views {views:3d} @ {resolution:4d} px ({point['tokens']:5d} tokens): "
        f"{point['step_median_s']:.3f} s, {point['peak_rss_mb']:.0f} MiB",
        flush=True,
    )
    return point


def fit_and_table(points: list[dict[str, Any]]) -> tuple[dict[str, list[float]], str]:
    counts = [p["tokens"] for p in points]
    fits = {
        "step_time_s": fit_cost_model(counts, [p["step_median_s"] for p in points], True),
        "peak_rss_mb": fit_cost_model(counts, [p["peak_rss_mb"] for p in points], False),
    }
    time_fit = predict(fits["step_time_s"], counts)
    memory_fit = predict(fits["peak_rss_mb"], counts)
    lines = [
        "| views | resolution | tokens | step (measured) | step (fit) | peak RSS (measured) "
        "| peak RSS (fit) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, t_fit, m_fit in zip(points, time_fit, memory_fit, strict=True):
        lines.append(
            f"| {p['views']} | {p['resolution']} | {p['tokens']} | {p['step_median_s']:.3f} s "
            f"| {t_fit:.3f} s | {p['peak_rss_mb']:.0f} MiB | {m_fit:.0f} MiB |"
        )
    c, a, b = fits["step_time_s"]
    cm, am = fits["peak_rss_mb"]
    lines += [
        "",
        f"fit: step = {c:.3g} s + {a:.3g} s x T + {b:.3g} s x T^2; "
        f"peak RSS = {cm:.0f} MiB + {am:.3g} MiB x T",
    ]
    return fits, "\n".join(lines)


def plot(points: list[dict[str, Any]], fits: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array([p["tokens"] for p in points])
    grid = np.linspace(0, counts.max() * 1.05, 200)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    resolutions = sorted({p["resolution"] for p in points})
    for resolution in resolutions:
        chosen = [p for p in points if p["resolution"] == resolution]
        x = [p["tokens"] for p in chosen]
        left.plot(x, [p["step_median_s"] for p in chosen], "o", label=f"{resolution} px")
        right.plot(x, [p["peak_rss_mb"] / 1024 for p in chosen], "o", label=f"{resolution} px")
    left.plot(grid, predict(fits["step_time_s"], grid), "k--", label="c + aT + bT² (fit)")
    right.plot(grid, predict(fits["peak_rss_mb"], grid) / 1024, "k--", label="c + aT (fit)")
    left.set(xlabel="tokens T = (views + 1) x tokens per view", ylabel="train step (s)")
    right.set(xlabel="tokens T = (views + 1) x tokens per view", ylabel="peak RSS (GiB)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    model = points[0].get("model", "")
    figure.suptitle(f"pippo-lightning {model} training step vs sequence length (views 2-16)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench_scale")
    parser.add_argument("--model", default="micro", choices=("micro", "tiny", "full"))
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--vae-dir", help=argparse.SUPPRESS)
    parser.add_argument("--point-views", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--point-resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point_views is not None:
        print("RESULT " + json.dumps(measure_point(args)), flush=True)
        return None

    from pippo_lightning.benchmarks.training import save_random_sdxl_vae

    points = []
    with tempfile.TemporaryDirectory(prefix="sdxl_vae_random_") as vae_dir:
        save_random_sdxl_vae(Path(vae_dir))
        for resolution in args.resolutions:
            for views in args.views:
                point = run_point(views, resolution, vae_dir, args)
                points.append({**point, "model": args.model})
    fits, table = fit_and_table(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "points": points, "fits": fits, "model_terms": __doc__}
    (out / "bench_scale.json").write_text(json.dumps(report, indent=2))
    (out / "bench_scale.md").write_text(table + "\n")
    plot(points, fits, out / "bench_scale.png")
    print(table)
    print(
        f"written: {out / 'bench_scale.json'}, {out / 'bench_scale.md'}, {out / 'bench_scale.png'}"
    )
    return report


if __name__ == "__main__":
    main()
