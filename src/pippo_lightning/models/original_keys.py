"""Load checkpoints of the original release (facebookresearch/pippo) into `Pippo`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pippo_lightning.models.pippo import Pippo, PippoConfig

# (original key pattern, our key template); a None template drops the key
_RULES: list[tuple[str, str | None]] = [
    # unused when the reference joins self-attention (cond_self_attn=True in all release configs)
    (r"generator\.blocks\.\d+\.(cond_attn_norm|cond_attn_proj|k_cond_norm)\..+", None),
    # the diffusion schedule and the VAE live outside the model
    (r"schedule\..+", None),
    (r"compressor\..+", None),
    (r"generator\.pos_embed", "generator.pos_embed"),
    (r"generator\.patchify\.blocks\.1\.(weight|bias)", r"generator.patch_embed.proj.\1"),
    (r"generator\.unpatchify\.blocks\.1\.(weight|bias)", r"generator.final_layer.proj.\1"),
    (r"generator\.t_embedder\.mlp\.([02])\.(weight|bias)", r"generator.t_embedder.mlp.\1.\2"),
    (r"generator\.blocks\.(\d+)\.in_norm\.(weight|bias)", r"generator.blocks.\1.norm.\2"),
    (
        r"generator\.blocks\.(\d+)\.(in_proj|q_norm|k_norm)\.(weight|bias)",
        r"generator.blocks.\1.\2.\3",
    ),
    (r"generator\.blocks\.(\d+)\.attn_out_proj\.(weight|bias)", r"generator.blocks.\1.attn_out.\2"),
    (
        r"generator\.blocks\.(\d+)\.cond_adaln\.1\.(weight|bias)",
        r"generator.blocks.\1.adaLN_modulation.1.\2",
    ),
    (r"generator\.blocks\.(\d+)\.mlp_out_proj\.(weight|bias)", r"generator.blocks.\1.mlp_out.\2"),
    (r"ref_encoder\.pos_embed", "ref_encoder.pos_embed"),
    (r"ref_encoder\.patchify\.blocks\.1\.(weight|bias)", r"ref_encoder.patch_embed.proj.\1"),
    (r"cam_mlp\.pos_embed", "camera_mlp.token"),
    (r"cam_mlp\.(in_norm|in_proj)\.(weight|bias)", r"camera_mlp.\1.\2"),
    (r"cam_mlp\.blocks\.0\.norm1\.(weight|bias)", r"camera_mlp.norm.\1"),
    (r"cam_mlp\.blocks\.0\.ff\.net\.0\.proj\.(weight|bias)", r"camera_mlp.geglu.proj.\1"),
    (r"cam_mlp\.blocks\.0\.ff\.net\.2\.(weight|bias)", r"camera_mlp.out_proj.\1"),
    (r"control_mlp\.control_zero_token", "control_mlp.null_control"),
    (
        r"control_mlp\.control_encoder\.conv_block\.0\.(weight|bias)",
        r"control_mlp.encoder.conv_in.\1",
    ),
    (
        r"control_mlp\.control_encoder\.conv_block\.2\.(weight|bias)",
        r"control_mlp.encoder.conv_down.\1",
    ),
    (
        r"control_mlp\.control_encoder\.conv_block\.4\.(weight|bias)",
        r"control_mlp.encoder.conv_out.\1",
    ),
    (r"control_mlp\.control_encoder\.conv_block\.5\.(weight|bias)", r"control_mlp.encoder.norm.\1"),
    (
        r"control_mlp\.zero_blocks\.(\d+)\.zero_ada_ln\.1\.(weight|bias)",
        r"control_mlp.blocks.\1.adaLN_modulation.1.\2",
    ),
    (
        r"control_mlp\.zero_blocks\.(\d+)\.zero_linear\.(weight|bias)",
        r"control_mlp.blocks.\1.proj.\2",
    ),
    (r"control_mlp\.t_embedder\.mlp\.([02])\.(weight|bias)", r"control_mlp.t_embedder.mlp.\1.\2"),
    # our SIREN keeps the original's Sequential layout (linear, sine, linear, sine, linear)
    (
        r"control_mlp\.plucker_encoder\.network\.(\d+)\.(weight|bias)",
        r"control_mlp.plucker_siren.net.\1.\2",
    ),
    (r"null_conds\.(ref|cam_pose)", r"null.\1"),
]
_COMPILED = [(re.compile(pattern), template) for pattern, template in _RULES]


def rename_original_key(key: str) -> str | None:
    """Our name for an original key; None for keys we drop; KeyError for keys we do not know."""
    for pattern, template in _COMPILED:
        if pattern.fullmatch(key):
            return None if template is None else pattern.sub(template, key)
    raise KeyError(key)


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
    }
    for name, (found, needed) in unsupported.items():
        if found != needed:
            raise ValueError(
                f"original config {name}={found!r} is not supported (needs {needed!r})"
            )
    if original_config.get("ref_encoder") is None:
        raise ValueError("original config has no ref_encoder; Pippo needs one")

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
            raise ValueError(
                f"original cam_mlp depth={cam.get('depth')} num_patches_or_tokens="
                f"{cam.get('num_patches_or_tokens')} not supported (needs 1 and 1)"
            )
        fields["camera_features"] = int(cam["in_channels"])
        fields["camera_hidden"] = int(cam["hidden_size"])
    control = original_config.get("control_mlp")
    fields["use_control"] = control is not None
    if control is not None:
        if not control.get("control_encoder_latent", False):
            raise ValueError("original control_mlp.control_encoder_latent=False is not supported")
        siren = control["plucker_siren_config"]
        fields["plucker_siren_layers"] = tuple(int(w) for w in siren["layers"])
        fields["plucker_features"] = int(siren["out_features"])
        fields["control_xt"] = bool(original_config.get("controlmlp_xt", False))
    return PippoConfig(**fields)


def infer_config(original: Mapping[str, Tensor], patch_size: int = 2) -> PippoConfig:
    """PippoConfig read off an original state dict's shapes (the release always uses patch 2)."""
    try:
        pos = original["generator.pos_embed"]
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
    except (KeyError, ValueError) as error:
        raise ValueError(
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
        hidden, features = original["cam_mlp.in_proj.weight"].shape
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
    return PippoConfig(**fields)


def convert_original_state_dict(
    original: Mapping[str, Tensor], config: PippoConfig | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Original state dict -> (our state dict, dropped original keys).

    Dropped: the unused per-block cross-attention weights, `schedule.*` and `compressor.*`.
    Shapes are checked against a meta-device `Pippo(config)`; with config None it is inferred
    from the shapes. Unknown, missing or mis-shaped keys raise one ValueError listing them all.
    """
    config = infer_config(original) if config is None else config
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Pippo(config).state_dict().items()}

    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    mismatched: list[str] = []
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
                mismatched.append(
                    f"{key} {tuple(value.shape)} -> {ours} expects {tuple(expected[ours])}"
                )
        else:
            converted[ours] = value
    missing = sorted(set(expected) - set(converted))
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
        raise ValueError("cannot convert original Pippo state dict; " + "; ".join(problems))
    return converted, sorted(dropped)


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)
