"""From a batch to what the denoiser reads (a mixin of :class:`~pippo_lightning.stages.base.PippoStage`).

Target views, the reference and the spatial anchors go through the stage's compressor (or come
from a latent cache); cameras and Plücker rays pass through; the frozen image encoder embeds the
reference. Which of them a stage reads follows its switches (`use_cameras`, `use_control`,
`use_reference`, `use_face_crop`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from pippo_lightning.conditioning.latents import LatentBatch

Batch = dict[str, Any]


class StageLatents:
    """Encoding and decoding views, and gathering a batch's conditions into a LatentBatch."""

    @torch.no_grad()
    def encode_views(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, V, 3, H, W] in [-1, 1] → [B, V, C, h, w] scaled latents."""
        b = images.shape[0]
        latents = self.compressor.encode(
            rearrange(images, "b v c h w -> (b v) c h w"), generator=generator
        )
        return rearrange(latents, "(b v) c h w -> b v c h w", b=b)

    @torch.no_grad()
    def decode_views(self, latents: Tensor) -> Tensor:
        """[B, V, C, h, w] → [B, V, 3, H, W] in [-1, 1]."""
        b = latents.shape[0]
        images = self.compressor.decode(rearrange(latents, "b v c h w -> (b v) c h w"))
        return rearrange(images, "(b v) c h w -> b v c h w", b=b).clamp(-1, 1)

    def to_latents(self, batch: Batch, generator: torch.Generator | None = None) -> LatentBatch:
        """The conditions and targets of `batch` in latent space; `generator` feeds a compressor
        that samples its posterior (training passes the stage's stream)."""
        images = batch["images"]
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"batch images are {tuple(images.shape[-2:])} but the stage was built for "
                f"image_size={self.image_size}"
            )
        ref = self.use_reference
        # a latent cache (pippo-data cache-latents) delivers what the compressor would compute
        cached = "latents" in batch
        anchors = None
        if self.use_control:
            if cached:
                anchors = batch["anchor_latents"] if ref else batch["anchor_latents"][:, :-1]
            else:
                views = [batch["anchor"], batch["ref_anchor"]] if ref else [batch["anchor"]]
                anchors = self.encode_views(torch.cat(views, dim=1), generator)
        ref_latent = None
        if ref:
            ref_latent = (
                batch["ref_latent"] if cached else self.encode_views(batch["ref_image"], generator)
            )
        latents = LatentBatch(
            x0=batch["latents"] if cached else self.encode_views(images, generator),
            ref_latent=ref_latent,
            cam_pose=batch["cam_pose"] if self.use_cameras else None,
            ref_cam_pose=batch["ref_cam_pose"] if self.use_cameras and ref else None,
            plucker=batch["plucker"] if self.use_control else None,
            ref_plucker=batch["ref_plucker"] if self.use_control and ref else None,
            anchor_latents=anchors,
            global_embedding=self.embed_image(batch),
        )
        return self.join_face_crop(batch, latents, generator) if self.use_face_crop else latents

    @torch.no_grad()
    def embed_image(self, batch: Batch) -> Tensor | None:
        """The frozen encoder's global embedding [B, E] of `batch[embed_key]`'s first view."""
        if self.image_encoder is None:
            return None
        return self.image_encoder(batch[self.embed_key][:, 0])

    def join_face_crop(
        self, batch: Batch, latents: LatentBatch, generator: torch.Generator | None = None
    ) -> LatentBatch:
        """Append `batch["face_crop"]` [B, 1, 3, H, W] as a second reference view (paper, P3).

        Its camera, Plücker rays and anchor default to the reference's, as the original feeds
        its face crop; `face_cam_pose`, `face_plucker`, `face_anchor` override them. The model's
        reference dropout drops both references together.
        """
        if "face_crop" not in batch:
            raise ValueError("use_face_crop=True but the batch has no 'face_crop' [B, 1, 3, H, W]")

        def join(ours: Tensor | None, face: Tensor | None) -> Tensor | None:
            return None if ours is None else torch.cat([ours, face], dim=1)

        anchor = None
        if self.use_control:
            face_anchor = batch.get("face_anchor")
            anchor = (
                latents.anchor_latents[:, -1:]  # the reference's anchor latent
                if face_anchor is None
                else self.encode_views(face_anchor, generator)
            )
        return dataclasses.replace(
            latents,
            ref_latent=join(latents.ref_latent, self.encode_views(batch["face_crop"], generator)),
            ref_cam_pose=join(
                latents.ref_cam_pose, batch.get("face_cam_pose", latents.ref_cam_pose)
            ),
            ref_plucker=join(latents.ref_plucker, batch.get("face_plucker", latents.ref_plucker)),
            anchor_latents=join(latents.anchor_latents, anchor),
        )
