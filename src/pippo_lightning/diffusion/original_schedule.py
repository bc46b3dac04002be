"""The original release's noise schedule (facebookresearch/pippo) as a `ScheduleConfig`.

Two routes: from the original YAML (`schedule_from_original`), or — when only weights are at
hand — by recognising the `schedule.alphas_cumprod` buffer the original saves in every
checkpoint (`identify_original_schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.diffusion.schedules import (
    COSINE_OFFSET,
    ScheduleConfig,
    compute_alphas_cumprod,
)
from pippo_lightning.errors import PippoError

#: The original's defaults for its linear kinds (Stable Diffusion's betas), used when its config
#: names a linear schedule without `linear_start` / `linear_end`.
ORIGINAL_LINEAR_START = 0.0085
ORIGINAL_LINEAR_END = 0.0120
_KINDS = {
    "cosine": "cosine",
    "linear": "linear",
    "linear_sd": "scaled_linear",
    "scaled_linear": "scaled_linear",
}
_PREDICTIONS = {"eps": "eps", "v": "v"}
#: The stored table is fp32 computed from float64 betas (ours too): agreement is ~1e-7.
IDENTIFY_ATOL = 1e-5


class OriginalScheduleError(PippoError, ValueError):
    """The original schedule cannot be expressed as, or recognised as, a ScheduleConfig."""


def schedule_from_original(model_config: Mapping[str, Any]) -> ScheduleConfig:
    """ScheduleConfig from the original `model` config: its `schedule` node + `parameterization`."""
    schedule = dict(model_config.get("schedule") or {})
    if "class_name" in schedule:
        raise OriginalScheduleError(
            f"original schedule class {schedule['class_name']!r} (flow matching) is not supported; "
            "only the default DiffusionSchedule is"
        )
    kind = schedule.get("schedule_type", "linear_sd")  # the original's default
    if kind not in _KINDS:
        raise OriginalScheduleError(
            f"original schedule_type={kind!r}: expected one of {sorted(_KINDS)}"
        )
    if float(schedule.get("cosine_start", COSINE_OFFSET)) != COSINE_OFFSET:
        raise OriginalScheduleError(
            f"original cosine_start={schedule['cosine_start']}: only {COSINE_OFFSET} is supported"
        )
    prediction = str(model_config.get("parameterization", "eps"))
    # the schedule has a parameterization of its own; the model's is the one sampling uses
    inner = schedule.get("parameterization", prediction)
    if prediction not in _PREDICTIONS or inner != prediction:
        raise OriginalScheduleError(
            f"original parameterization={prediction!r} (schedule: {inner!r}): expected eps or v, "
            "the same in both places"
        )
    fields: dict[str, Any] = {
        "kind": _KINDS[kind],
        "num_timesteps": int(schedule.get("num_timesteps", 1000)),
        "prediction": _PREDICTIONS[prediction],
        "shift_ratio": float(schedule.get("rescale_ratio") or 1.0),
        "zero_terminal_snr": bool(schedule.get("zero_terminal_snr", False)),
    }
    if fields["kind"] != "cosine":  # the cosine table ignores betas: keep our defaults there
        fields["beta_start"] = float(schedule.get("linear_start", ORIGINAL_LINEAR_START))
        fields["beta_end"] = float(schedule.get("linear_end", ORIGINAL_LINEAR_END))
    try:
        return ScheduleConfig(**fields)
    except ValueError as err:
        raise OriginalScheduleError(f"original schedule: {err}") from None


def original_noise_offset(model_config: Mapping[str, Any]) -> float:
    """The offset-noise strength the original trains with (its schedule's, else its model's)."""
    schedule = model_config.get("schedule") or {}
    for value in (schedule.get("noise_offset"), model_config.get("noise_offset")):
        if value is not None:
            return float(value)
    return 0.0


def estimate_shift_ratio(base: Tensor, shifted: Tensor) -> float:
    """r with shifted = base / (r + (1 - r) base), solved per step and averaged.

    Per step r = base (1 - shifted) / (shifted (1 - base)); steps where either table is within
    5% of 0 or 1 are left out, where the ratio is ill-conditioned. Tables are float64 [T].
    """
    usable = (base > 0.05) & (base < 0.95) & (shifted > 0.05) & (shifted < 0.95)
    if not usable.any():
        return 1.0
    ratios = base[usable] * (1 - shifted[usable]) / (shifted[usable] * (1 - base[usable]))
    return float(ratios.median())


def identify_original_schedule(
    alphas_cumprod: Tensor, prediction: str = "eps", atol: float = IDENTIFY_ATOL
) -> ScheduleConfig:
    """The ScheduleConfig whose table equals the original's stored `schedule.alphas_cumprod`.

    Tries the original's kinds at its default betas (cosine; linear and scaled-linear with
    0.0085 / 0.012), with and without zero terminal SNR, each with the resolution shift ratio
    solved from the table; raises OriginalScheduleError when none matches within `atol`.
    """
    stored = alphas_cumprod.detach().to("cpu", torch.float64).reshape(-1)  # [T]
    steps = stored.shape[0]
    best = float("inf")
    for kind in ("cosine", "linear", "scaled_linear"):
        for zero_snr in (False, True):
            if zero_snr and prediction != "v":
                continue  # ScheduleConfig refuses it (x0 is not recoverable from eps at ᾱ = 0)
            fields: dict[str, Any] = {
                "kind": kind,
                "num_timesteps": steps,
                "prediction": prediction,
                "zero_terminal_snr": zero_snr,
            }
            if kind != "cosine":
                fields.update(beta_start=ORIGINAL_LINEAR_START, beta_end=ORIGINAL_LINEAR_END)
            base = compute_alphas_cumprod(ScheduleConfig(**fields))
            ratio = float(f"{estimate_shift_ratio(base, stored):.6g}")
            config = ScheduleConfig(**fields, shift_ratio=ratio)
            error = (compute_alphas_cumprod(config) - stored).abs().max().item()
            if error <= atol:
                return config
            best = min(best, error)
    hint = (
        "" if prediction == "v" else " (zero-terminal-SNR tables are only tried with prediction v)"
    )
    raise OriginalScheduleError(
        f"schedule.alphas_cumprod ({steps} steps) matches no known original schedule "
        f"(closest max error {best:.2e}){hint}; pass the original YAML config"
    )
