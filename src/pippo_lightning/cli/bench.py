"""`pippo-bench`: train-step time, samples/s, peak memory, DDIM sampling time, parameter counts."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from pippo_lightning.cli.common import CONFIG_DIR, check_overrides, guarded
from pippo_lightning.data.benchmark import benchmark_dataloader
from pippo_lightning.inference.device import autocast, peak_memory_mb, pick_device, timed
from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.precision import resolve_precision


def first_batch(cfg: DictConfig, batch_size: int, device: torch.device) -> dict[str, Any]:
    datamodule = hydra.utils.instantiate(cfg.data, batch_size=batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    opts = cfg.bench
    device = pick_device(opts.device)
    precision = resolve_precision(opts.precision, "gpu" if device.type == "cuda" else "cpu")
    print(f"precision: {opts.precision} -> {precision}")
    torch.manual_seed(cfg.seed)
    compressor = hydra.utils.instantiate(cfg.compressor)
    stage: PippoStage = hydra.utils.instantiate(cfg.stage, compressor=compressor).to(device)
    batch = first_batch(cfg, opts.batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    encode_s = timed(lambda: stage.to_latents(batch), device)
    latents = stage.to_latents(batch)
    optimizer = stage.configure_optimizers()["optimizer"]
    b = latents.batch_size
    drops = stage.sample_condition_drops(b)

    def train_step() -> None:
        t = stage.schedule.sample_timesteps(b, device=device)
        noise = torch.randn_like(latents.x0)
        with autocast(device, precision):
            loss = stage.diffusion_loss(latents, t, noise, drops)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    stage.train()
    for _ in range(opts.warmup_steps):
        train_step()
    step_times = [timed(train_step, device) for _ in range(opts.steps)]
    train_peak = peak_memory_mb(device)

    stage.eval()
    sampling = dataclasses.replace(stage.sampling, num_steps=int(opts.sampling_steps))
    with autocast(device, precision):
        sample_s = timed(lambda: stage.generate(batch, sampling=sampling), device)

    median = statistics.median(step_times)
    loader = hydra.utils.instantiate(cfg.data, batch_size=opts.batch_size)
    data_samples_per_s = benchmark_dataloader(loader, int(opts.data_batches))
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "precision": precision,
        "precision_requested": str(opts.precision),
        "model": cfg.model.size,
        "image_size": cfg.image_size,
        "latent_shape": list(latents.x0.shape),
        "num_views": int(latents.x0.shape[1]),
        "batch_size": b,
        "torch_threads": torch.get_num_threads(),
        "encode_s": encode_s,
        "train_step_median_s": median,
        "train_step_all_s": step_times,
        "samples_per_s": b / median,
        "data_samples_per_s": data_samples_per_s,
        "views_per_s": b * latents.x0.shape[1] / median,
        "peak_memory_mb": train_peak,
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "ddim_steps": int(opts.sampling_steps),
        "ddim_sampling_s": sample_s,
        "ddim_s_per_step": sample_s / int(opts.sampling_steps),
        "cfg_scale": stage.sampling.cfg_scale,
        "parameters": stage.parameter_counts(),
    }
    output = Path(opts.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print_report(result, output)
    return result


def print_report(result: dict[str, Any], output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"pippo-bench: {result['model']} @ {result['image_size']} px on {result['device']}, "
        f"precision {result['precision_requested']} -> {result['precision']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("latent batch [B, NV, C, h, w]", str(result["latent_shape"])),
        ("train step (median)", f"{result['train_step_median_s'] * 1e3:.1f} ms"),
        ("samples / s", f"{result['samples_per_s']:.2f}"),
        ("data loader samples / s", f"{result['data_samples_per_s']:.1f}"),
        ("views / s", f"{result['views_per_s']:.2f}"),
        (f"peak memory ({result['peak_memory_kind']})", f"{result['peak_memory_mb']:.0f} MiB"),
        (f"DDIM sampling, {result['ddim_steps']} steps", f"{result['ddim_sampling_s']:.2f} s"),
        ("encode (compressor)", f"{result['encode_s'] * 1e3:.1f} ms"),
    ]
    rows += [(f"params: {k}", f"{v / 1e6:.2f} M") for k, v in result["parameters"].items()]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    print(f"written: {output}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
@guarded
def _main(cfg: DictConfig) -> None:
    benchmark(cfg)


def main() -> None:
    check_overrides("bench")
    _main()


if __name__ == "__main__":
    main()
