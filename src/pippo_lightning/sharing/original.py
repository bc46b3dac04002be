"""Converting an original Pippo checkpoint into a PostTrainStage checkpoint (pippo-convert).

The original release saves the model (no EMA weights, no epoch); this writes a checkpoint that
`PostTrainStage.load_from_checkpoint` loads, with the hyper-parameters the original was trained
with (model size, noise schedule, attention biasing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor

from pippo_lightning.checkpoints.atomic import atomic_torch_save
from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.checkpoints.original import (
    choose_model_size,
    compact_label,
    config_label,
    describe_dropped,
    load_original_checkpoint,
    plain_data,
    read_original_config,
    training_views,
)
from pippo_lightning.compressors.base import Compressor
from pippo_lightning.diffusion.original_schedule import (
    IDENTIFY_ATOL,
    identify_original_schedule,
    original_noise_offset,
    schedule_from_original,
)
from pippo_lightning.diffusion.schedules import ScheduleConfig, compute_alphas_cumprod
from pippo_lightning.models.original_keys import (
    OriginalCheckpointError,
    config_from_original,
    convert_original_state_dict,
    infer_config,
)
from pippo_lightning.models.pippo import Pippo, PippoConfig
from pippo_lightning.stages.post_train import PostTrainStage

#: Every release config uses the SDXL VAE: 4 latent channels, 8x down-sampling.
SDXL_LATENT_CHANNELS = 4


SDXL_DOWNSAMPLE = 8


#: Original `model` keys for classifier-free-guidance dropout -> ours (stage.condition_dropout).
_DROPOUT_KEYS = {
    "p_drop_ref_img": "ref",
    "p_drop_cam_pos_enc": "cameras",
    "p_drop_control": "control",
    "p_drop_all_cond": "all",
}


FORMAT_VERSION = 1


class _LatentShape(Compressor):
    """Stand-in compressor with the SDXL VAE's shapes and no weights: lets the converter build a
    meta-device stage (for its hyper-parameters and state-dict names) without loading a VAE."""

    def __init__(self, latent_channels: int, downsample_factor: int) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.downsample_factor = downsample_factor

    def _encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError("shape-only compressor")

    def _decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError("shape-only compressor")

    def identity_key(self) -> str:
        return f"latent-shape-c{self.latent_channels}-f{self.downsample_factor}"


@dataclasses.dataclass
class Conversion:
    """What `convert_original_checkpoint` wrote, and what it left behind."""

    source: Path
    destination: Path
    iteration: int
    model_size: str
    model_overrides: dict[str, Any]
    image_size: int
    num_views: int
    attention_training: dict[str, Any]  # N_train of attention biasing and the rule that gave it
    schedule: ScheduleConfig
    dropped: dict[str, int]  # original key -> number of values
    training_options: dict[str, Any]
    ignored_entries: list[str]
    notes: list[str]

    def summary(self) -> list[str]:
        """Human-readable lines: the result, then every dropped or ignored part."""
        overrides = ", ".join(f"{k}={v}" for k, v in self.model_overrides.items()) or "none"
        s = self.schedule
        lines = [
            f"converted {self.source} (iteration {self.iteration}) -> {self.destination}",
            f"  model {self.model_size} (overrides: {overrides}), image_size {self.image_size}, "
            f"num_views {self.num_views}",
            f"  attention biasing: N_train {self.attention_training['tokens']} tokens "
            f"({self.attention_training['rule']})",
            f"  schedule {s.kind}, {s.num_timesteps} steps, prediction {s.prediction}, "
            f"shift_ratio {s.shift_ratio:g}, zero_terminal_snr {s.zero_terminal_snr}",
        ]
        if self.training_options:
            options = ", ".join(f"{k}={v}" for k, v in self.training_options.items())
            lines.append(f"  from the original config: {options}")
        lines += [f"  dropped {line}" for line in describe_dropped(self.dropped)]
        lines += [f"  not converted: {entry}" for entry in self.ignored_entries]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def convert_original_checkpoint(
    src: str | Path,
    dst: str | Path,
    original_config: str | Path | Mapping[str, Any] | None = None,
    num_views: int | None = None,
    prediction: str | None = None,
    downsample_factor: int = SDXL_DOWNSAMPLE,
    model_key: str = "model",
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Conversion:
    """Convert an original checkpoint `src` into a `PostTrainStage` checkpoint at `dst`.

    original_config: the release YAML (path) or its `model` mapping; None infers the model from
    the weight shapes and the schedule from the stored `schedule.alphas_cumprod`.
    num_views: the stage's training views, which set N_train of attention biasing to
    (num_views + references) views of tokens; default: the original's rule (see
    `training_views`), which ignores the YAML's num_views.
    prediction: "eps" | "v" when there is no YAML (weights cannot tell); default "eps".
    Raises OriginalCheckpointError (a PippoError) listing every unknown, missing or mis-shaped
    weight, FileNotFoundError / FileExistsError for paths. The file is written atomically and
    loads with `torch.load(weights_only=True)`.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it")
    state, rest = load_original_checkpoint(src, model_key, trust_pickle)
    model_cfg = None if original_config is None else read_original_config(original_config)
    notes: list[str] = []

    config = infer_config(state) if model_cfg is None else config_from_original(model_cfg)
    if not (config.use_cameras and config.use_control):
        raise OriginalCheckpointError(
            "the checkpoint has no camera MLP or no ControlMLP (a pre-/mid-training model); "
            "only post-training (P3) checkpoints convert to PostTrainStage"
        )
    converted, dropped = convert_original_state_dict(state, config)
    converted = {k: compact_label(v) for k, v in converted.items()}

    schedule = _schedule(state, model_cfg, prediction, notes)
    image_size = config.latent_size * downsample_factor
    if model_cfg is not None and int(model_cfg.get("img_size", image_size)) != image_size:
        raise OriginalCheckpointError(
            f"original img_size={model_cfg['img_size']} but the generator's latent grid "
            f"{config.latent_size} x downsample {downsample_factor} = {image_size}"
        )
    training_options = {} if model_cfg is None else _training_options(model_cfg)
    num_refs = 2 if training_options.get("use_face_crop") else 1
    num_views, attention_training = training_views(config, num_refs, num_views, model_cfg)

    size, overrides = choose_model_size(config)
    stage_kwargs: dict[str, Any] = {
        "model_size": size,
        "model_overrides": overrides,
        "image_size": image_size,
        "num_views": num_views,
        "schedule": dataclasses.asdict(schedule),
    }
    stage_kwargs.update(training_options)
    hparams, stage_state = _stage_checkpoint_parts(
        config, converted, stage_kwargs, downsample_factor
    )

    iteration = int(rest.get("iteration") or 0)
    ignored = _ignored_entries(rest)
    checkpoint = {
        "state_dict": stage_state,
        "hyper_parameters": hparams,
        "pytorch-lightning_version": lightning.__version__,
        "global_step": iteration,
        "epoch": int(rest.get("epoch") or 0),
        "pippo_original": {
            "format_version": FORMAT_VERSION,
            "stage": PostTrainStage.__name__,
            "source": str(src.resolve()),
            "config": None if model_cfg is None else config_label(original_config),
            "model_key": model_key,
            "iteration": iteration,
            "model_config": plain_data(dataclasses.asdict(config)),
            "attention_training": attention_training,
            "compressor": {
                "latent_channels": config.latent_channels,
                "downsample_factor": downsample_factor,
                "scale_factor": None if model_cfg is None else model_cfg.get("scale_factor"),
            },
            "dropped_keys": dropped,
            "not_converted": ignored,
            "notes": notes,
        },
    }
    atomic_torch_save(checkpoint, dst)
    return Conversion(
        source=src,
        destination=dst,
        iteration=iteration,
        model_size=size,
        model_overrides=overrides,
        image_size=image_size,
        num_views=num_views,
        attention_training=attention_training,
        schedule=schedule,
        dropped={key: state[key].numel() for key in dropped},
        training_options=training_options,
        ignored_entries=ignored,
        notes=notes,
    )


def load_converted_model(path: str | Path, map_location: str | torch.device = "cpu") -> Pippo:
    """The bare `Pippo` of a converted checkpoint, built from its stored model config (no stage,
    no compressor): for running the denoiser on latents directly."""
    checkpoint = load_torch_file(Path(path), map_location=map_location)
    try:
        config = PippoConfig(**checkpoint["pippo_original"]["model_config"])
    except KeyError:
        raise OriginalCheckpointError(f"{path}: not written by pippo-convert") from None
    model = Pippo(config)
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


def _schedule(
    state: Mapping[str, Tensor],
    model_cfg: Mapping[str, Any] | None,
    prediction: str | None,
    notes: list[str],
) -> ScheduleConfig:
    """The schedule from the YAML (checked against the stored table) or from the table alone."""
    stored = state.get("schedule.alphas_cumprod")
    if model_cfg is not None:
        schedule = schedule_from_original(model_cfg)
        if prediction is not None and prediction != schedule.prediction:
            raise OriginalCheckpointError(
                f"--prediction {prediction} contradicts the original config's "
                f"parameterization={schedule.prediction!r}"
            )
        if stored is not None:
            ours = compute_alphas_cumprod(schedule)
            if stored.numel() != ours.numel():
                raise OriginalCheckpointError(
                    f"the config's schedule has {ours.numel()} steps, the checkpoint's "
                    f"schedule.alphas_cumprod {stored.numel()}"
                )
            error = (ours - stored.double().reshape(-1)).abs().max().item()
            if error > IDENTIFY_ATOL:
                raise OriginalCheckpointError(
                    f"the config's schedule {schedule} differs from the checkpoint's stored "
                    f"schedule.alphas_cumprod by up to {error:.2e}: is it the right config?"
                )
        return schedule
    if prediction is None:
        prediction = "eps"  # every release config
        notes.append("prediction=eps assumed (weights cannot tell eps from v; pass --prediction)")
    if stored is None:
        notes.append("no schedule buffers in the checkpoint: assumed the release's cosine schedule")
        return ScheduleConfig(prediction=prediction)
    return identify_original_schedule(stored, prediction)


def _training_options(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Stage options the original `model` config sets beyond the architecture."""
    options: dict[str, Any] = {
        "condition_dropout": {
            ours: float(model_cfg.get(theirs) or 0.0) for theirs, ours in _DROPOUT_KEYS.items()
        },
        "noise_offset": original_noise_offset(model_cfg),
    }
    if model_cfg.get("face_cropper") is not None:
        if model_cfg.get("replace_ref_w_face", False):
            raise OriginalCheckpointError(
                "original replace_ref_w_face=True is not supported (the face crop joins as a "
                "second reference here)"
            )
        options["use_face_crop"] = True
    return options


def _stage_checkpoint_parts(
    config: PippoConfig,
    converted: Mapping[str, Tensor],
    stage_kwargs: Mapping[str, Any],
    downsample_factor: int,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(hyper-parameters, state dict) exactly as PostTrainStage saves them.

    A meta-device stage built with `stage_kwargs` gives both the hyper-parameters and every
    state-dict name it will ask for on a strict load; this also proves it rebuilds `config`.
    The stage's EMA of the weights starts equal to them (as a fresh EMA does): the same tensors
    under both names, which torch.save stores once.
    """
    compressor = _LatentShape(config.latent_channels, downsample_factor)
    with torch.device("meta"):
        stage = PostTrainStage(compressor=compressor, **stage_kwargs)
    if stage.model_config != config:
        raise OriginalCheckpointError(
            f"internal: stage rebuilt {stage.model_config}, expected {config}"
        )
    state: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, meta in stage.state_dict().items():
        name = key.removeprefix("model.").removeprefix("ema.shadow.")
        if key.startswith(("model.", "ema.shadow.")) and name in converted:
            value = converted[name]
        elif key == "ema.num_updates":
            value = torch.zeros((), dtype=meta.dtype)  # no averaging has happened yet
        else:
            unmatched.append(f"{key} {tuple(meta.shape)}")
            continue
        if value.shape != meta.shape:
            unmatched.append(f"{key} {tuple(meta.shape)} (converted {tuple(value.shape)})")
        state[key] = value
    unused = sorted(set(converted) - {k.removeprefix("model.") for k in state})
    if unmatched or unused:
        raise OriginalCheckpointError(
            "internal: PostTrainStage's state dict and the converted weights differ: "
            f"stage entries without weights {unmatched}, weights without entries {unused}"
        )
    return plain_data(dict(stage.hparams)), state


def _ignored_entries(rest: Mapping[str, Any]) -> list[str]:
    """Top-level entries besides the weights that are not carried over, with why."""
    reasons = {
        "optimizer": "optimizer state (fine-tuning starts a fresh AdamW)",
        "iteration": None,
        "epoch": None,
    }
    ignored = []
    for key in sorted(map(str, rest)):
        reason = reasons.get(
            key,
            f"top-level entry {key!r} (unknown to the release; "
            "pass --model-key to convert weights stored there, e.g. EMA)",
        )
        if reason is not None:
            ignored.append(reason)
    return ignored
