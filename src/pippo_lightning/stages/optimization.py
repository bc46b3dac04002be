"""AdamW with warm-up, fused where torch allows, and gradient clipping that works with it (a
mixin of :class:`~pippo_lightning.stages.base.PippoStage`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class StageOptimization:
    """The optimizer and learning-rate schedule of `optimizer_config`, and gradient clipping."""

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optimizer_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            # one kernel per tensor instead of ~8 passes over memory: the for-loop AdamW was
            # ~1/3 of a tiny-model CPU step (docs/performance.md); sharded DTensors keep foreach
            fused=fused_adamw_supported(params) and not self._fp16_loss_scaling(),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def _fp16_loss_scaling(self) -> bool:
        trainer = getattr(self, "_trainer", None)
        return trainer is not None and str(trainer.precision).startswith("16")

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's AMP plugin refuses to clip for any fused optimizer (fp16 loss scaling would
        # leave the gradients scaled). Fused AdamW is only chosen without a loss scaler (fp32,
        # bf16), where the gradients are the true ones: clip them directly.
        if optimizer.defaults.get("fused") and gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def fused_adamw_supported(params: list[Tensor]) -> bool:
    """torch's fused AdamW takes plain fp32/bf16 tensors on CPU or CUDA (not FSDP2 DTensors)."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(
        type(p) is torch.nn.Parameter
        and not isinstance(p.data, DTensor)
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.bfloat16)
        for p in params
    )
