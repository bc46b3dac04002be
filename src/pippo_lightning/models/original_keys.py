"""Translate between checkpoints of the original release (facebookresearch/pippo) and `Pippo`.

One table of (original name, our name) templates drives both directions, so import
(`convert_original_state_dict`) and export (`to_original_state_dict`) cannot drift apart.
Templates hold two fields: `{n}` a block / layer index, `{p}` "weight" or "bias".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.errors import PippoError
from pippo_lightning.models.pippo import Pippo, PippoConfig


class OriginalCheckpointError(PippoError, ValueError):
    """An original checkpoint or config that cannot be converted; the message lists why."""


#: Per-block weights the original allocates for cross-attention to the reference. Every release
#: config sets cond_self_attn=True (the reference joins self-attention), so they are never read.
UNUSED_BLOCK_MODULES = ("cond_attn_norm", "cond_attn_proj", "k_cond_norm")


@dataclass(frozen=True)
class _Rule:
    """One original name <-> our name template; `layout` names a shape change between them."""

    original: str
    ours: str
    layout: str = "same"  # "same" | "conv1x1" (weight: ours [O, I], theirs [O, I, 1, 1]) | "token"


_FIELDS = {"n": r"\d+", "p": r"weight|bias"}

_RULES: tuple[_Rule, ...] = (
    _Rule("generator.pos_embed", "generator.pos_embed"),
    _Rule("generator.patchify.blocks.1.{p}", "generator.patch_embed.proj.{p}", "conv1x1"),
    _Rule("generator.unpatchify.blocks.1.{p}", "generator.final_layer.proj.{p}", "conv1x1"),
    _Rule("generator.t_embedder.mlp.{n}.{p}", "generator.t_embedder.mlp.{n}.{p}"),
    _Rule("generator.blocks.{n}.in_norm.{p}", "generator.blocks.{n}.norm.{p}"),
    _Rule("generator.blocks.{n}.in_proj.{p}", "generator.blocks.{n}.in_proj.{p}"),
    _Rule("generator.blocks.{n}.q_norm.{p}", "generator.blocks.{n}.q_norm.{p}"),
    _Rule("generator.blocks.{n}.k_norm.{p}", "generator.blocks.{n}.k_norm.{p}"),
    _Rule("generator.blocks.{n}.attn_out_proj.{p}", "generator.blocks.{n}.attn_out.{p}"),
    _Rule("generator.blocks.{n}.cond_adaln.1.{p}", "generator.blocks.{n}.adaLN_modulation.1.{p}"),
    _Rule("generator.blocks.{n}.mlp_out_proj.{p}", "generator.blocks.{n}.mlp_out.{p}"),
    _Rule("ref_encoder.pos_embed", "ref_encoder.pos_embed"),
    _Rule("ref_encoder.patchify.blocks.1.{p}", "ref_encoder.patch_embed.proj.{p}", "conv1x1"),
    _Rule("cam_mlp.pos_embed", "camera_mlp.token", "token"),
    _Rule("cam_mlp.in_norm.{p}", "camera_mlp.in_norm.{p}"),
    _Rule("cam_mlp.in_proj.{p}", "camera_mlp.in_proj.{p}"),
    _Rule("cam_mlp.blocks.0.norm1.{p}", "camera_mlp.norm.{p}"),
    _Rule("cam_mlp.blocks.0.ff.net.0.proj.{p}", "camera_mlp.geglu.proj.{p}"),
    _Rule("cam_mlp.blocks.0.ff.net.2.{p}", "camera_mlp.out_proj.{p}"),
    _Rule("control_mlp.control_zero_token", "control_mlp.null_control"),
    _Rule("control_mlp.control_encoder.conv_block.0.{p}", "control_mlp.encoder.conv_in.{p}"),
    _Rule("control_mlp.control_encoder.conv_block.2.{p}", "control_mlp.encoder.conv_down.{p}"),
    _Rule("control_mlp.control_encoder.conv_block.4.{p}", "control_mlp.encoder.conv_out.{p}"),
    _Rule("control_mlp.control_encoder.conv_block.5.{p}", "control_mlp.encoder.norm.{p}"),
    _Rule(
        "control_mlp.zero_blocks.{n}.zero_ada_ln.1.{p}",
        "control_mlp.blocks.{n}.adaLN_modulation.1.{p}",
    ),
    _Rule("control_mlp.zero_blocks.{n}.zero_linear.{p}", "control_mlp.blocks.{n}.proj.{p}"),
    _Rule("control_mlp.t_embedder.mlp.{n}.{p}", "control_mlp.t_embedder.mlp.{n}.{p}"),
    # our SIREN keeps the original's Sequential layout (linear, sine, linear, sine, linear)
    _Rule("control_mlp.plucker_encoder.network.{n}.{p}", "control_mlp.plucker_siren.net.{n}.{p}"),
    _Rule("null_conds.ref", "null.ref"),
    _Rule("null_conds.cam_pose", "null.cam_pose"),
)

#: Original keys dropped on import: the unused cross-attention, and two parts that live outside
#: the model here (the schedule is rebuilt from its config, the VAE is the stage's compressor).
_DROPPED = (
    re.compile(rf"generator\.blocks\.\d+\.({'|'.join(UNUSED_BLOCK_MODULES)})\.(weight|bias)"),
    re.compile(r"schedule\..+"),
    re.compile(r"compressor\..+"),
)


def _compile(template: str) -> re.Pattern[str]:
    """A template with {n} / {p} fields -> a full-match regex with named groups."""
    pattern = re.escape(template)
    for field, regex in _FIELDS.items():
        pattern = pattern.replace(re.escape(f"{{{field}}}"), f"(?P<{field}>{regex})")
    return re.compile(pattern)


_FORWARD = [(_compile(rule.original), rule) for rule in _RULES]
_INVERSE = [(_compile(rule.ours), rule) for rule in _RULES]


def is_dropped_original_key(key: str) -> bool:
    """True for original keys that have no counterpart here by design (see `_DROPPED`)."""
    return any(pattern.fullmatch(key) for pattern in _DROPPED)


def rename_original_key(key: str) -> str | None:
    """Our name for an original key; None for keys we drop; KeyError for keys we do not know."""
    if is_dropped_original_key(key):
        return None
    for pattern, rule in _FORWARD:
        if match := pattern.fullmatch(key):
            return rule.ours.format(**match.groupdict())
    raise KeyError(key)


def original_key(key: str) -> tuple[str, str]:
    """(original name, layout) for one of our keys; KeyError for keys the original lacks."""
    for pattern, rule in _INVERSE:
        if match := pattern.fullmatch(key):
            return rule.original.format(**match.groupdict()), rule.layout
    raise KeyError(key)


def strip_wrapper_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without torch.compile's `_orig_mod.` (anywhere: submodules may be compiled alone)
    or DDP's leading `module.`; the original strips the former on load, so such files exist."""
    return {key.replace("_orig_mod.", "").removeprefix("module."): v for key, v in state.items()}


def config_from_original(original_config: Mapping[str, Any]) -> PippoConfig:
    """PippoConfig from the original release's `model` config (e.g. tiny/128_4v_tiny.yml)."""
    gen = original_config["generator"]
    unsupported = {
        "ref_cond_attn": (original_config.get("ref_cond_attn"), True),
        "multiview_grid_stack": (original_config.get("multiview_grid_stack"), False),
        "generator.cond_self_attn": (gen.get("cond_self_attn"), True),
        "generator.pos_embed_kind": (gen.get("pos_embed_kind"), "old"),
        "generator.patchify_ps": (gen.get("patchify_ps", True), True),
        "generator.num_views": (gen.get("num_views", 1), 1),
        "generator.qk_rms_norm": (gen.get("qk_rms_norm", False), False),
        "plucker_mlp": (original_config.get("plucker_mlp"), None),
        "kpts_encoder": (original_config.get("kpts_encoder"), None),
    }
    for name, (found, needed) in unsupported.items():
        if found != needed:
            raise OriginalCheckpointError(
                f"original config {name}={found!r} is not supported (needs {needed!r})"
            )
    if original_config.get("ref_encoder") is None:
        raise OriginalCheckpointError("original config has no ref_encoder; Pippo needs one")

    fields: dict[str, Any] = {
        "latent_channels": int(gen["in_channels"]),
        "latent_size": int(gen["img_size"]),
        "patch_size": int(gen["patch_size"]),
        "dim": int(gen["dim"]),
        "depth": int(gen["depth"]),
        "num_heads": int(gen["num_heads"]),
        "mlp_ratio": float(gen.get("mlp_ratio", 4.0)),
    }
    cam = original_config.get("cam_mlp")
    fields["use_cameras"] = cam is not None
    if cam is not None:
        if int(cam.get("depth", 1)) != 1 or int(cam.get("num_patches_or_tokens", 1)) != 1:
            raise OriginalCheckpointError(
                f"original cam_mlp depth={cam.get('depth')} num_patches_or_tokens="
                f"{cam.get('num_patches_or_tokens')} not supported (needs 1 and 1)"
            )
        fields["camera_features"] = int(cam["in_channels"])
        fields["camera_hidden"] = int(cam["hidden_size"])
    control = original_config.get("control_mlp")
    fields["use_control"] = control is not None
    if control is not None:
        if not control.get("control_encoder_latent", False):
            raise OriginalCheckpointError(
                "original control_mlp.control_encoder_latent=False is not supported"
            )
        siren = control["plucker_siren_config"]
        fields["plucker_siren_layers"] = tuple(int(w) for w in siren["layers"])
        fields["plucker_features"] = int(siren["out_features"])
        fields["control_xt"] = bool(original_config.get("controlmlp_xt", False))
    try:
        return PippoConfig(**fields)
    except ValueError as err:
        raise OriginalCheckpointError(f"original config: {err}") from None


def infer_config(original: Mapping[str, Tensor], patch_size: int = 2) -> PippoConfig:
    """PippoConfig read off an original state dict's shapes (the release always uses patch 2)."""
    original = strip_wrapper_prefixes(original)
    try:
        pos = original["generator.pos_embed"]  # [1, N, D]
        dim = pos.shape[-1]
        grid = round(pos.shape[1] ** 0.5)
        depth = 1 + max(
            int(m.group(1))
            for key in original
            if (m := re.fullmatch(r"generator\.blocks\.(\d+)\..+", key))
        )
        head_dim = original["generator.blocks.0.q_norm.weight"].shape[0]
        mlp_hidden = original["generator.blocks.0.in_proj.weight"].shape[0] - 3 * dim
        channels = original["generator.unpatchify.blocks.1.weight"].shape[0] // patch_size**2
    except (KeyError, ValueError, IndexError) as error:
        raise OriginalCheckpointError(
            f"not an original Pippo state dict: missing or malformed {error}"
        ) from None
    fields: dict[str, Any] = {
        "latent_channels": channels,
        "latent_size": grid * patch_size,
        "patch_size": patch_size,
        "dim": dim,
        "depth": depth,
        "num_heads": dim // head_dim,
        "mlp_ratio": mlp_hidden / dim,
        "use_cameras": "cam_mlp.in_proj.weight" in original,
        "use_control": "control_mlp.control_encoder.conv_block.0.weight" in original,
    }
    if fields["use_cameras"]:
        hidden, features = original["cam_mlp.in_proj.weight"].shape  # [H, F]
        fields.update(camera_features=features, camera_hidden=hidden)
    if fields["use_control"]:
        siren = sorted(
            (int(m.group(1)), value.shape[0])
            for key, value in original.items()
            if (m := re.fullmatch(r"control_mlp\.plucker_encoder\.network\.(\d+)\.weight", key))
        )
        widths = [width for _, width in siren]
        control_in = original["control_mlp.control_encoder.conv_block.0.weight"].shape[1]
        fields.update(
            plucker_siren_layers=tuple(widths[:-1]),
            plucker_features=widths[-1],
            control_xt=control_in - channels - widths[-1] == channels,
        )
    try:
        return PippoConfig(**fields)
    except ValueError as err:
        raise OriginalCheckpointError(f"config inferred from the weights: {err}") from None


def expected_shapes(config: PippoConfig) -> dict[str, torch.Size]:
    """Our state dict's names and shapes for `config`, from a meta-device model (no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Pippo(config).state_dict().items()}


def convert_original_state_dict(
    original: Mapping[str, Tensor], config: PippoConfig | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Original state dict -> (our state dict, dropped original keys).

    Dropped: the unused per-block cross-attention weights, `schedule.*` and `compressor.*`.
    Shapes are checked against a meta-device `Pippo(config)`; with config None it is inferred
    from the shapes. Unknown, missing or mis-shaped keys raise one OriginalCheckpointError
    listing them all with their shapes.
    """
    original = strip_wrapper_prefixes(original)
    config = infer_config(original) if config is None else config
    expected = expected_shapes(config)

    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    mismatched: list[str] = []
    seen_mismatched: list[str] = []
    for key, value in original.items():
        try:
            ours = rename_original_key(key)
        except KeyError:
            unknown.append(f"{key} {tuple(value.shape)}")
            continue
        if ours is None:
            dropped.append(key)
        elif ours not in expected:
            unknown.append(f"{key} {tuple(value.shape)} (would be {ours})")
        elif value.shape != expected[ours]:
            # 1x1 convs become linears and [1, 1, H] tokens become [H]: same numbers, other shape
            if _squeezed(value.shape) == _squeezed(expected[ours]):
                converted[ours] = value.reshape(expected[ours])
            else:
                seen_mismatched.append(ours)
                mismatched.append(
                    f"{key} {tuple(value.shape)} -> {ours} expects {tuple(expected[ours])}"
                )
        else:
            converted[ours] = value
    # a mis-shaped weight is reported once, as a mismatch, not again as missing
    missing = sorted(set(expected) - set(converted) - set(seen_mismatched))
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (
            ("unknown original keys", unknown),
            ("shape mismatches", mismatched),
            ("missing keys", [f"{k} {tuple(expected[k])}" for k in missing]),
        )
        if items
    ]
    if problems:
        raise OriginalCheckpointError(
            "cannot convert original Pippo state dict; " + "; ".join(problems)
        )
    return converted, sorted(dropped)


def to_original_state_dict(
    state: Mapping[str, Tensor], config: PippoConfig, include_unused: bool = True
) -> dict[str, Tensor]:
    """Our state dict -> the original release's names and shapes (export, and round-trip tests).

    include_unused adds the per-block cross-attention weights the original allocates (never
    read; norms at their init of ones/zeros, projections zero) so the original loads it strictly.
    Schedule buffers and the VAE are not part of the result.
    """
    exported: dict[str, Tensor] = {}
    for key, value in state.items():
        try:
            name, layout = original_key(key)
        except KeyError:
            raise OriginalCheckpointError(
                f"{key} {tuple(value.shape)} has no original name"
            ) from None
        if layout == "conv1x1" and value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)  # Linear [O, I] -> Conv2d [O, I, 1, 1]
        elif layout == "token":
            value = value.reshape(1, 1, -1)  # [H] -> [1, 1, H]
        exported[name] = value
    if include_unused:
        exported.update(unused_original_weights(config))
    return exported


def unused_original_weights(config: PippoConfig) -> dict[str, Tensor]:
    """The never-read cross-attention weights of every original block, at neutral values."""
    d, e = config.dim, config.head_dim
    weights: dict[str, Tensor] = {}
    for i in range(config.depth):
        prefix = f"generator.blocks.{i}"
        weights[f"{prefix}.cond_attn_norm.weight"] = torch.ones(d)
        weights[f"{prefix}.cond_attn_norm.bias"] = torch.zeros(d)
        weights[f"{prefix}.cond_attn_proj.weight"] = torch.zeros(2 * d, d)  # fused [k, v]
        weights[f"{prefix}.cond_attn_proj.bias"] = torch.zeros(2 * d)
        weights[f"{prefix}.k_cond_norm.weight"] = torch.ones(e)
        weights[f"{prefix}.k_cond_norm.bias"] = torch.zeros(e)
    return weights


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)
