"""`precision: auto`: bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere.

Native bf16 means: a CUDA device that supports it (Ampere and later), or a CPU with AMX or
AVX512-BF16 (e.g. AMD Zen 4, Intel Sapphire Rapids), where oneDNN's bf16 matrix products run
several times faster than fp32 ones. Elsewhere bf16 is emulated and slower than fp32, so `auto`
keeps fp32. Explicit Lightning precision strings ("32-true", "bf16-mixed", ...) pass through.
The loss and the noise schedule are computed in fp32 whatever the precision (diffusion/loss.py,
diffusion/schedules.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

AUTO = "auto"
#: CPU feature flags (as /proc/cpuinfo spells them) that give native bf16 matrix products
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: short spellings the sampling CLIs (bench, evaluate, generate) accept, as Lightning strings
SHORT_NAMES = {"fp32": "32-true", "32": "32-true", "bf16": "bf16-mixed"}
#: Lightning precision strings that run the forward under bf16 autocast
BF16_AUTOCAST = frozenset({"bf16-mixed", "bf16"})
FP32 = frozenset({"32-true", "32"})


def cpu_has_native_bf16(flags: Iterable[str]) -> bool:
    """True when the CPU feature flags include AMX-BF16 or AVX512-BF16."""
    return not CPU_BF16_FLAGS.isdisjoint(flag.lower() for flag in flags)


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This machine's CPU flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose_precision(accelerator: str, cpu_flags: Iterable[str], cuda_bf16: bool) -> str:
    """The Lightning precision `auto` stands for on `accelerator` ("cpu" | "gpu" | "cuda")."""
    if accelerator in ("gpu", "cuda"):
        return "bf16-mixed" if cuda_bf16 else "32-true"
    if accelerator == "cpu":
        return "bf16-mixed" if cpu_has_native_bf16(cpu_flags) else "32-true"
    raise ValueError(f"precision=auto: unknown accelerator {accelerator!r} (cpu | gpu | cuda)")


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str:
    """A Lightning precision string: `auto` resolved for this machine, short names expanded,
    anything else (an explicit choice) returned as given."""
    value = str(precision)
    if value != AUTO:
        return SHORT_NAMES.get(value, value)
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    cuda_bf16 = accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    cuda_bf16 = cuda_bf16 and torch.cuda.is_bf16_supported()
    return choose_precision(accelerator, read_cpu_flags(), cuda_bf16)


@contextlib.contextmanager
def autocast_for(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast as Lightning's precision plugin does for `precision` (a resolved string or a
    short name); fp32 runs without autocast."""
    value = resolve_precision(precision, "gpu" if device.type == "cuda" else device.type)
    if value in BF16_AUTOCAST:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif value in FP32:
        yield
    else:
        raise ValueError(
            f"precision={precision!r}: expected auto, fp32, bf16, 32-true or bf16-mixed"
        )
