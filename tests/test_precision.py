"""`precision: auto`: which precision each machine gets, and how configs resolve it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from pippo_lightning.cli.common import CONFIG_DIR
from pippo_lightning.cli.train import resolve_trainer_precision
from pippo_lightning.stages.precision import (
    autocast_for,
    choose_precision,
    cpu_has_native_bf16,
    read_cpu_flags,
    resolve_precision,
)

ZEN4 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}
ZEN3 = {"fpu", "sse2", "avx2", "fma"}
SKYLAKE_X = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}


@pytest.mark.parametrize(
    ("flags", "native"),
    [(ZEN4, True), (SAPPHIRE_RAPIDS, True), (ZEN3, False), (SKYLAKE_X, False), (set(), False)],
)
def test_cpu_bf16_detection_from_flags(flags: set[str], native: bool) -> None:
    assert cpu_has_native_bf16(flags) is native
    assert choose_precision("cpu", flags, cuda_bf16=False) == (
        "bf16-mixed" if native else "32-true"
    )


def test_gpu_choice_follows_cuda_bf16_support_not_cpu_flags() -> None:
    assert choose_precision("gpu", ZEN3, cuda_bf16=True) == "bf16-mixed"
    assert choose_precision("cuda", ZEN4, cuda_bf16=False) == "32-true"  # e.g. a V100
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        choose_precision("tpu", ZEN4, cuda_bf16=False)


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == set()


def test_explicit_precisions_win_and_short_names_expand() -> None:
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"
    assert resolve_precision("fp32", "cpu") == "32-true"
    assert resolve_precision("bf16", "cpu") == "bf16-mixed"
    auto = resolve_precision("auto", "cpu")
    assert auto == ("bf16-mixed" if cpu_has_native_bf16(read_cpu_flags()) else "32-true")


def test_autocast_for_follows_the_precision() -> None:
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_for(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_for(cpu, "32-true"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="precision='fp8'"), autocast_for(cpu, "fp8"):
        pass


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        ("cpu", None),  # auto
        ("gpu_16gb", "bf16-mixed"),
        ("gpu_80gb", "bf16-mixed"),
        ("gpu_8x_ddp", "bf16-mixed"),
        ("gpu_fsdp", "32-true"),
    ],
)
def test_every_hardware_preset_resolves_to_a_lightning_precision(
    hardware: str, expected: str | None
) -> None:
    cfg = compose_train([f"hardware={hardware}"])
    resolved = resolve_trainer_precision(cfg)
    assert cfg.trainer.precision == resolved
    if expected is None:
        assert resolved == resolve_precision("auto", "cpu")
    else:
        assert resolved == expected


def test_command_line_precision_beats_auto() -> None:
    cfg = compose_train(["trainer.precision=32-true"])
    assert resolve_trainer_precision(cfg) == "32-true"
    cfg = compose_train(["trainer.precision=bf16-mixed"])
    assert resolve_trainer_precision(cfg) == "bf16-mixed"
    cfg = compose_train([])
    assert cfg.trainer.precision == "auto"
