"""Pippo: DiT generator + reference encoder + camera MLP + ControlMLP, composed in one module."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from pippo_lightning.models.camera import CameraMLP
from pippo_lightning.models.control import ControlMLP
from pippo_lightning.models.dit import DiT
from pippo_lightning.models.input_checks import check_inputs, check_mask, check_shape
from pippo_lightning.models.layers import FP32LayerNorm
from pippo_lightning.models.reference import ReferenceEncoder


@dataclass(frozen=True)
class PippoConfig:
    """Architecture hyper-parameters; sizes come from MODEL_SIZES via `pippo_config`."""

    latent_channels: int = 4
    latent_size: int = 16  # h == w of one view's latent grid
    patch_size: int = 2
    dim: int = 96
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    camera_features: int = 16
    camera_hidden: int = 64
    plucker_siren_layers: tuple[int, ...] = (16, 32)
    plucker_features: int = 32
    use_cameras: bool = True  # camera MLP (M2, P3)
    use_control: bool = True  # ControlMLP (P3)
    control_xt: bool = True  # x_t joins the ControlMLP input
    control_anchor: bool = True  # the spatial anchor joins the ControlMLP input (ablation: off)
    control_plucker: bool = True  # Plücker rays join the ControlMLP input (ablation: off)
    use_reference: bool = True  # reference view(s) in the sequence (M2, P3)
    #: width of a global image embedding (P1: DINOv2) projected into the adaLN conditioning; 0 = none
    global_embedding_dim: int = 0
    #: recompute each DiT block in backward (memory for time; GPU presets)
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Hydra hands lists over; keep the dataclass hashable and comparable
        object.__setattr__(self, "plucker_siren_layers", tuple(self.plucker_siren_layers))
        positive = (
            "latent_channels",
            "latent_size",
            "patch_size",
            "dim",
            "depth",
            "num_heads",
            "camera_features",
            "camera_hidden",
            "plucker_features",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PippoConfig.{name} must be a positive int, got {value!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"PippoConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.dim % self.num_heads:
            raise ValueError(
                f"PippoConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}"
            )
        if self.dim % 4:
            raise ValueError(
                f"PippoConfig.dim={self.dim} must be divisible by 4 (2-D sin-cos embedding)"
            )
        if self.latent_size % self.patch_size:
            raise ValueError(
                f"PippoConfig.latent_size={self.latent_size} must be divisible by "
                f"patch_size={self.patch_size}"
            )
        if not self.plucker_siren_layers or any(
            not isinstance(w, int) or w < 1 for w in self.plucker_siren_layers
        ):
            raise ValueError(
                "PippoConfig.plucker_siren_layers must be a non-empty tuple of positive ints, "
                f"got {self.plucker_siren_layers!r}"
            )
        if self.global_embedding_dim < 0:
            raise ValueError(
                f"PippoConfig.global_embedding_dim must be >= 0, got {self.global_embedding_dim}"
            )
        if self.use_control and not (self.control_anchor or self.control_xt):
            raise ValueError(
                "PippoConfig: the ControlMLP needs control_anchor or control_xt "
                "(one of them sets its latent grid)"
            )
        if self.use_control and self.patch_size != 2:
            # the ControlMLP's single stride-2 conv makes exactly one token per 2x2 patch
            raise ValueError(
                f"PippoConfig.patch_size={self.patch_size}: use_control=True needs patch_size 2"
            )

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.num_heads

    @property
    def tokens_per_view(self) -> int:
        """Tokens of one view (and of the reference): (latent_size / patch_size)^2."""
        return (self.latent_size // self.patch_size) ** 2


MODEL_SIZES: dict[str, dict[str, Any]] = {
    "micro": {"dim": 96, "depth": 2, "num_heads": 4, "camera_hidden": 64},
    "tiny": {"dim": 768, "depth": 12, "num_heads": 24, "camera_hidden": 1024},
    "full": {"dim": 1536, "depth": 28, "num_heads": 24, "camera_hidden": 1024},
}


def pippo_config(size: str, **overrides: Any) -> PippoConfig:
    """Config of a named size ("micro", "tiny", "full") with field overrides."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {sorted(MODEL_SIZES)}")
    known = {f.name for f in fields(PippoConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown PippoConfig fields {unknown}; valid fields: {sorted(known)}")
    return replace(PippoConfig(**MODEL_SIZES[size]), **overrides)


class NullEmbeddings(nn.Module):
    """Learned stand-ins for dropped conditions (classifier-free guidance), zero at init."""

    def __init__(self, dim: int, use_cameras: bool, use_global: bool = False) -> None:
        super().__init__()
        self.ref = nn.Parameter(torch.zeros(1, 1, 1, dim))  # broadcasts over [B, R, N, D]
        cam_pose = nn.Parameter(torch.zeros(1, 1, dim)) if use_cameras else None  # over [B, NV, D]
        self.register_parameter("cam_pose", cam_pose)
        # over [B, D]; present only with a global embedding so older checkpoints keep their keys
        global_embedding = nn.Parameter(torch.zeros(1, dim)) if use_global else None
        self.register_parameter("global_embedding", global_embedding)


class GlobalEmbedding(nn.Module):
    """A global image embedding (e.g. DINOv2's CLS token) -> one conditioning vector [B, D].

    The projection starts at zero so adding it to a trained model changes nothing at first.
    """

    def __init__(self, embedding_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(embedding_dim)
        self.proj = nn.Linear(embedding_dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.proj(self.norm(embedding))


class Pippo(nn.Module):
    """Multi-view diffusion transformer: denoise NV target views given a reference and controls."""

    def __init__(self, config: PippoConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.generator = DiT(
            cfg.latent_channels,
            cfg.latent_size,
            cfg.patch_size,
            cfg.dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_ratio,
        )
        self.generator.activation_checkpointing = cfg.activation_checkpointing
        self.ref_encoder = (
            ReferenceEncoder(cfg.latent_channels, cfg.latent_size, cfg.patch_size, cfg.dim)
            if cfg.use_reference
            else None
        )
        self.global_embedding = (
            GlobalEmbedding(cfg.global_embedding_dim, cfg.dim) if cfg.global_embedding_dim else None
        )
        self.camera_mlp = (
            CameraMLP(cfg.camera_features, cfg.camera_hidden, cfg.dim) if cfg.use_cameras else None
        )
        self.control_mlp = (
            ControlMLP(
                cfg.latent_channels,
                cfg.dim,
                cfg.depth,
                cfg.plucker_siren_layers,
                cfg.plucker_features,
                use_xt=cfg.control_xt,
                use_anchor=cfg.control_anchor,
                use_plucker=cfg.control_plucker,
            )
            if cfg.use_control
            else None
        )
        self.null = NullEmbeddings(cfg.dim, cfg.use_cameras, cfg.global_embedding_dim > 0)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        ref_latent: Tensor | None = None,
        cam_pose: Tensor | None = None,
        ref_cam_pose: Tensor | None = None,
        plucker: Tensor | None = None,
        ref_plucker: Tensor | None = None,
        anchor_latents: Tensor | None = None,
        drop_ref: Tensor | None = None,
        drop_cameras: Tensor | None = None,
        drop_control: Tensor | None = None,
        attention_scale: float | None = None,
        global_embedding: Tensor | None = None,
        drop_global: Tensor | None = None,
    ) -> Tensor:
        """Predict eps for x_t [B, NV, C, h, w]; see `input_checks.check_inputs` for every shape.

        ref_latent None leaves the reference out of the sequence altogether (the target views
        attend only to each other): the pre-training (P1) setting, and what makes a stage
        initialised from P1 reproduce P1 exactly. global_embedding [B, E] (with
        global_embedding_dim = E) conditions every block through the adaLN.

        drop_* are bool [B] masks (True = that sample gets the learned null condition), so the
        conditional and unconditional passes of classifier-free guidance share this one path.
        drop_cameras replaces the target views' camera embeddings; the reference's camera is part
        of the reference tokens and goes with drop_ref, as in the original.
        """
        check_inputs(
            self.config,
            x_t,
            t,
            ref_latent,
            cam_pose,
            ref_cam_pose,
            plucker,
            ref_plucker,
            anchor_latents,
        )
        cfg = self.config
        batch, num_views = x_t.shape[:2]
        for name, mask in (
            ("drop_ref", drop_ref),
            ("drop_cameras", drop_cameras),
            ("drop_control", drop_control),
            ("drop_global", drop_global),
        ):
            check_mask(name, mask, batch)
        condition = self._global_condition(global_embedding, drop_global, batch)

        with_ref = ref_latent is not None and self.ref_encoder is not None
        targets = self.generator.embed_views(x_t)  # [B, NV, N, D]
        refs = self.ref_encoder(ref_latent) if with_ref else None  # [B, R, N, D]
        if self.camera_mlp is not None:
            cams = self.camera_mlp(cam_pose)  # [B, NV, D]
            if drop_cameras is not None:
                cams = torch.where(drop_cameras[:, None, None], self.null.cam_pose, cams)
            targets = targets + cams[:, :, None]
            if refs is not None:
                refs = refs + self.camera_mlp(ref_cam_pose)[:, :, None]
        if refs is not None and drop_ref is not None:
            refs = torch.where(drop_ref[:, None, None, None], self.null.ref, refs)
        # order matters for the controls and the output split: target views, then reference
        tokens = targets if refs is None else torch.cat([targets, refs], dim=1)

        controls = None
        if self.control_mlp is not None:
            xt_all, rays = x_t, plucker
            if refs is not None:  # the reference joins with no noise of its own
                xt_all = torch.cat([x_t, torch.zeros_like(ref_latent)], dim=1)
                rays = torch.cat([plucker, ref_plucker], dim=1) if cfg.control_plucker else None
            # inputs the ControlMLP was built without are not handed over (ablations)
            controls = self.control_mlp(
                anchor_latents if cfg.control_anchor else None,
                rays if cfg.control_plucker else None,
                t,
                x_t=xt_all,
                drop=drop_control,
            )

        tokens = self.generator(
            tokens, t, controls=controls, attention_scale=attention_scale, condition=condition
        )
        return self.generator.unembed_views(tokens[:, :num_views])

    def _global_condition(
        self, embedding: Tensor | None, drop: Tensor | None, batch: int
    ) -> Tensor | None:
        """The projected global embedding [B, D] (the learned null where dropped), or None."""
        if self.global_embedding is None:
            return None
        if embedding is None:
            raise ValueError(
                "global_embedding is required when PippoConfig.global_embedding_dim="
                f"{self.config.global_embedding_dim}"
            )
        check_shape(
            "global_embedding", embedding, ("B", batch), ("E", self.config.global_embedding_dim)
        )
        condition = self.global_embedding(embedding)
        if drop is not None:
            condition = torch.where(drop[:, None], self.null.global_embedding, condition)
        return condition


def count_parameters(model: Pippo) -> dict[str, int]:
    """Parameter counts per part (works on the meta device).

    generator: the DiT alone (patchify, position table, timestep embedder, blocks, output layer),
    without the original's unused per-block cross-attention weights; this is the paper's
    "generator" minus those (tiny 128.4M, full 1192.7M at latent 16). control_mlp includes its
    own timestep embedder, SIREN and null token; null_embeddings counts the reference and camera
    nulls; total is everything.
    """

    def numel(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    counts = {
        "generator": numel(model.generator),
        "control_mlp": numel(model.control_mlp),
        "camera_mlp": numel(model.camera_mlp),
        "ref_encoder": numel(model.ref_encoder),
        "global_embedding": numel(model.global_embedding),
        "null_embeddings": numel(model.null),
    }
    counts["total"] = numel(model)
    return counts
