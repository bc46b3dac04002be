"""`pippo-convert`: an original-release checkpoint (facebookresearch/pippo) -> a stage checkpoint.

The original's `train.py` saves `{"iteration": int, "model": state_dict, "optimizer": ...}` (no
EMA weights, no epoch). This writes a checkpoint that `PostTrainStage.load_from_checkpoint(path,
compressor=...)` loads, with the model config read from the original YAML or, without it, from
the weight shapes; the diffusion schedule from the YAML or from the `schedule.alphas_cumprod`
buffer the original stores. The optimizer state is not carried over (start fine-tuning with a
fresh AdamW), and the result is a weights checkpoint for `load_from_checkpoint`, not a training
state for `Trainer.fit(ckpt_path=...)`.

    pippo-convert original/checkpoints/100000.pt p3_tiny_128.ckpt --config config/tiny/128_4v_tiny.yml
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.compressors.base import Compressor
from pippo_lightning.diffusion.attention_biasing import original_train_views
from pippo_lightning.diffusion.original_schedule import (
    IDENTIFY_ATOL,
    identify_original_schedule,
    original_noise_offset,
    schedule_from_original,
)
from pippo_lightning.diffusion.schedules import ScheduleConfig, compute_alphas_cumprod
from pippo_lightning.models.original_keys import (
    UNUSED_BLOCK_MODULES,
    OriginalCheckpointError,
    config_from_original,
    convert_original_state_dict,
    infer_config,
    strip_wrapper_prefixes,
)
from pippo_lightning.models.pippo import MODEL_SIZES, Pippo, PippoConfig, pippo_config
from pippo_lightning.stages.post_train import PostTrainStage

#: Every release config uses the SDXL VAE: 4 latent channels, 8x down-sampling.
SDXL_LATENT_CHANNELS = 4
SDXL_DOWNSAMPLE = 8
#: Fields the stage derives from the compressor and its own class, never model overrides.
_PINNED = ("latent_size", "latent_channels", "use_cameras", "use_control")
#: Original `model` keys for classifier-free-guidance dropout -> ours (stage.condition_dropout).
_DROPOUT_KEYS = {
    "p_drop_ref_img": "ref",
    "p_drop_cam_pos_enc": "cameras",
    "p_drop_control": "control",
    "p_drop_all_cond": "all",
}
FORMAT_VERSION = 1
#: What to do about an original checkpoint that weights-only loading refused.
TRUST_PICKLE_ADVICE = (
    "if you trust the file (e.g. you trained it with the original code), rerun with "
    "--trust-pickle (trust_pickle=True), which is off by default because it lets the file run "
    "any code; otherwise re-save its weights as plain tensors"
)


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


def describe_dropped(sizes: Mapping[str, int]) -> list[str]:
    """Dropped original keys (-> element counts) as one line per reason."""
    groups: dict[str, list[str]] = {}
    for key in sizes:
        groups.setdefault(_drop_reason(key), []).append(key)
    return [
        f"{len(keys)} tensor{'s' * (len(keys) != 1)} "
        f"({sum(sizes[k] for k in keys) / 1e6:.1f}M values): {reason}"
        for reason, keys in groups.items()
    ]


def _drop_reason(key: str) -> str:
    if key.startswith("schedule."):
        return "schedule buffers (rebuilt from the schedule config)"
    if key.startswith("compressor."):
        return "VAE weights (the stage's compressor loads its own)"
    return f"never-used per-block cross-attention weights ({', '.join(UNUSED_BLOCK_MODULES)})"


def load_original_checkpoint(
    path: Path, model_key: str = "model", trust_pickle: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(model state dict, the file's other top-level entries) of an original checkpoint.

    Loads weights-only (checkpointing.load_torch_file): a file that needs code to unpickle is
    refused with an UnsafeCheckpointError before any of it runs. `trust_pickle` (off by
    default, the CLI's --trust-pickle) is the explicit opt-in to unpickle such a file anyway,
    as the original's own loader does. Memory-maps where the file format allows, so a
    1.3B-parameter checkpoint is not read into memory twice. A bare state dict is accepted too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint not found: {path}")
    try:
        if trust_pickle:
            mmap = zipfile.is_zipfile(path)  # legacy (non-zip) files cannot be memory-mapped
            raw = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        else:
            raw = load_torch_file(path, mmap=True, advice=TRUST_PICKLE_ADVICE)
    except (RuntimeError, EOFError, OSError) as err:
        raise OriginalCheckpointError(f"{path}: not a readable torch checkpoint ({err})") from None
    if not isinstance(raw, Mapping):
        raise OriginalCheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    if model_key in raw and isinstance(raw[model_key], Mapping):
        rest = {k: v for k, v in raw.items() if k != model_key}
        return strip_wrapper_prefixes(raw[model_key]), rest
    state = strip_wrapper_prefixes(raw)
    if "generator.pos_embed" in state and all(isinstance(v, Tensor) for v in state.values()):
        return state, {}  # a bare model state dict
    raise OriginalCheckpointError(
        f"{path}: no model state dict under {model_key!r}; top-level entries: {sorted(map(str, raw))}"
    )


def read_original_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The original's `model` config as plain data, from a YAML path or a mapping.

    A full release YAML (`consts`, `model`, `optimizer`, ...) is resolved, then its `model` node
    taken; a mapping that is already the `model` node is used as is.
    """
    from omegaconf import OmegaConf  # deferred: only the --config route needs it
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(source, Mapping):
        config = OmegaConf.create(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"original config not found: {path}")
        config = OmegaConf.load(path)
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as err:
        raise OriginalCheckpointError(f"original config {source}: {err}") from None
    model = plain.get("model", plain) if isinstance(plain, dict) else None
    if not isinstance(model, dict) or "generator" not in model:
        raise OriginalCheckpointError(
            f"original config {source}: no `model.generator` node (is it a release YAML?)"
        )
    return model


def choose_model_size(config: PippoConfig) -> tuple[str, dict[str, Any]]:
    """The named size needing the fewest overrides to give `config`, and those overrides."""
    best: tuple[str, dict[str, Any]] | None = None
    for size in MODEL_SIZES:
        base = pippo_config(size)
        overrides = {
            f.name: _plain(getattr(config, f.name))
            for f in dataclasses.fields(PippoConfig)
            if f.name not in _PINNED and getattr(config, f.name) != getattr(base, f.name)
        }
        if best is None or len(overrides) < len(best[1]):
            best = (size, overrides)
    assert best is not None
    return best


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
    converted = {k: _compact(v) for k, v in converted.items()}

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
            "config": None if model_cfg is None else _config_label(original_config),
            "model_key": model_key,
            "iteration": iteration,
            "model_config": _plain(dataclasses.asdict(config)),
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
    save_atomically(checkpoint, dst)
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


def training_views(
    config: PippoConfig,
    num_refs: int,
    num_views: int | None = None,
    model_cfg: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(the stage's num_views, what sets its N_train of attention biasing) for a converted model.

    The stage counts N_train as (num_views + num_refs) views of tokens. By default that is the
    original's count (diffusion.attention_biasing.original_train_views: by resolution, whatever
    its YAML's num_views says), so a converted model biases attention as the original does;
    `num_views` (--num-views) overrides it.
    """
    tokens_per_view = config.tokens_per_view
    if num_views is not None:
        rule = f"--num-views {num_views} + {num_refs} reference view(s)"
    else:
        views, rule = original_train_views(tokens_per_view)
        rule = f"the original's resolution rule: {rule}, whatever its config's num_views"
        if model_cfg is not None and "num_views" in model_cfg:
            rule += f" (here {model_cfg['num_views']})"
        num_views = views - num_refs  # the original's views include the reference(s)
        if num_views < 1:
            raise OriginalCheckpointError(
                f"the original's {views} training views at {tokens_per_view} tokens per view "
                f"leave no target view beside {num_refs} references: pass --num-views"
            )
    if num_views < 1:
        raise OriginalCheckpointError(f"num_views={num_views}: must be >= 1")
    tokens = (num_views + num_refs) * tokens_per_view
    return num_views, {
        "rule": rule,
        "views": num_views + num_refs,
        "tokens_per_view": tokens_per_view,
        "tokens": tokens,
    }


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


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: a crash or a
    full disk leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- helpers


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
    return _plain(dict(stage.hparams)), state


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


def _config_label(source: str | Path | Mapping[str, Any] | None) -> str:
    if isinstance(source, (str, Path)):
        return str(Path(source).resolve())
    return "<mapping>"


def _compact(value: Tensor) -> Tensor:
    """A tensor that owns exactly its storage, so torch.save writes no unrelated bytes."""
    if value.is_contiguous() and value.untyped_storage().nbytes() == value.nbytes:
        return value
    return value.contiguous().clone()


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, recursively: what weights-only loading accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- CLI


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
