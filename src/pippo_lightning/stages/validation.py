"""Validation of a stage: the loss at fixed timesteps and noise, sampled views and their scores
(a mixin of :class:`~pippo_lightning.stages.base.PippoStage`)."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from pippo_lightning.conditioning.dropout import no_drops
from pippo_lightning.metrics.reprojection import reprojection_log_name
from pippo_lightning.stages.sampling import sample_noise

Batch = dict[str, Any]


class StageValidation:
    """`val/loss` (no condition dropped, comparable across steps), sampled views with PSNR /
    SSIM / LPIPS, the copy-the-reference baseline, and the reprojection error."""

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor] | None:
        latents = self.to_latents(batch)
        b = latents.batch_size
        keep_all = no_drops(b, self.device)
        # Fixed timesteps and noise seeded by sample index make the validation loss comparable
        # across steps and independent of how samples are batched or sharded over ranks.
        losses = []
        for step in self.validation_config.loss_timesteps:
            t = torch.full((b,), step, dtype=torch.long, device=self.device)
            noise = sample_noise(latents.x0.shape, batch["index"], offset=step).to(self.device)
            losses.append(self.diffusion_loss(latents, t, noise, keep_all, use_ema=True))
        self.log("val/loss", torch.stack(losses).mean(), batch_size=b, sync_dist=True)

        if batch_idx >= self.validation_config.sample_batches:
            return None
        generated = self.generate(batch)
        target = batch["images"]
        if "ref_image" not in batch:
            return {"generated": generated, "target": target, "reference": target[:, :1]}
        reference = batch["ref_image"].expand_as(target)
        self.val_image_metrics.update(generated.float(), target.float())
        if self.val_reprojection is not None:
            self.val_reprojection.update(
                generated.float(), batch["intrinsics"], batch["extrinsics"], target.float()
            )
        self.log("val/psnr", psnr(generated, target), batch_size=b, sync_dist=True)
        # The trivial baseline: copy the reference photo into every target view.
        self.log("val/psnr_copy_reference", psnr(reference, target), batch_size=b, sync_dist=True)
        return {"generated": generated, "target": target, "reference": batch["ref_image"]}

    def on_validation_epoch_end(self) -> None:
        if not self.val_image_metrics.update_called:
            return  # no batch was sampled (sample_batches=0, or no reference photos)
        # compute() gathers the per-view scores of every rank; each rank logs the same values.
        scores = self.val_image_metrics.compute()
        # val/psnr is logged per batch above (with the copy-the-reference baseline beside it)
        self.log_dict({f"val/{name}": value for name, value in scores.items() if name != "psnr"})
        self.val_image_metrics.reset()
        if self.val_reprojection is not None and self.val_reprojection.update_called:
            figures = self.val_reprojection.compute()
            # NaN (no pair matched, e.g. views too small for SIFT) is left out, not logged
            self.log_dict(
                {
                    f"val/{reprojection_log_name(key)}": value.float()
                    for key, value in figures.items()
                    if torch.isfinite(value)
                }
            )
            self.val_reprojection.reset()


def psnr(images: Tensor, target: Tensor) -> Tensor:
    """Mean per-view PSNR (dB) of images in [-1, 1]."""
    a = rearrange((images.float() + 1) / 2, "b v c h w -> (b v) c h w")
    b = rearrange((target.float() + 1) / 2, "b v c h w -> (b v) c h w")
    return peak_signal_noise_ratio(
        a, b, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
    )
