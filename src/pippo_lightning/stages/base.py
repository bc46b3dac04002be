"""The one LightningModule all Pippo stages share: loss, optimizer, sampling, validation.

A stage differs only in which conditions its model has (cameras, ControlMLP) and so which
entries of the batch it reads; everything else — the noising, the classifier-free-guidance
dropout masks, AdamW with warm-up, validation sampling — lives here once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from einops import rearrange
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from pippo_lightning.checkpointing import load_torch_file
from pippo_lightning.compressors.base import Compressor
from pippo_lightning.data.latent_cache import check_latent_identity
from pippo_lightning.diffusion.attention_biasing import attention_softmax_scale
from pippo_lightning.diffusion.ddim import DDIMSampler
from pippo_lightning.diffusion.guidance import bump_cfg_scale
from pippo_lightning.diffusion.loss import DiffusionLoss, offset_noise
from pippo_lightning.diffusion.sampling import Sampler, SamplerFactory
from pippo_lightning.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pippo_lightning.metrics.image import ImageMetrics
from pippo_lightning.metrics.reprojection import ReprojectionError, reprojection_log_name
from pippo_lightning.models.image_encoders import ImageEncoder
from pippo_lightning.models.pippo import Pippo, PippoConfig, count_parameters, pippo_config
from pippo_lightning.stages.compilation import compile_networks
from pippo_lightning.stages.config import (
    ConditionDropout,
    ConfigError,
    EMAConfig,
    OptimizerConfig,
    SamplingConfig,
    ValidationConfig,
    coerce,
    plain,
)
from pippo_lightning.stages.ema import EMA
from pippo_lightning.stages.init_from import fit_problems, misfit_message, model_weights
from pippo_lightning.stages.sharding import configure_sharding, gradient_norm

Batch = dict[str, Any]
log = logging.getLogger(__name__)


def load_stage_weights(path: str) -> dict[str, Tensor]:
    """The Pippo weights of a stage checkpoint (EMA where present), keys relative to the model."""
    if not Path(path).is_file():
        raise ConfigError(f"init_from={path}: no such checkpoint file")
    return model_weights(load_torch_file(path), path)


@dataclasses.dataclass
class LatentBatch:
    """A batch after compression: everything the denoiser reads, in latent space."""

    x0: Tensor  # [B, NV, C, h, w] clean target latents
    ref_latent: Tensor  # [B, R, C, h, w]: the reference (+ face crop)
    cam_pose: Tensor | None  # [B, NV, 16]
    ref_cam_pose: Tensor | None  # [B, R, 16]
    plucker: Tensor | None  # [B, NV, 6, H, W]
    ref_plucker: Tensor | None  # [B, R, 6, H, W]
    anchor_latents: Tensor | None  # [B, NV + R, C, h, w], targets then reference(s)
    global_embedding: Tensor | None = None  # [B, E] from the frozen image encoder

    @property
    def batch_size(self) -> int:
        return self.x0.shape[0]

    def repeat(self, times: int) -> LatentBatch:
        """The same conditions stacked `times` over the batch axis (for batched guidance)."""
        if times == 1:
            return self

        def stack(value: Tensor | None) -> Tensor | None:
            return None if value is None else torch.cat([value] * times, dim=0)

        return LatentBatch(
            **{f.name: stack(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )


class PippoStage(L.LightningModule):
    """Denoising training of a Pippo model over multi-view batches (see `data.dataset`)."""

    #: Stage-level switches on the model; subclasses pin them.
    use_cameras: bool = True
    use_control: bool = True
    use_reference: bool = True
    #: which image the frozen image encoder (if any) embeds: the target itself (P1) or the
    #: reference photo (later stages)
    embed_key: str = "ref_image"

    def __init__(
        self,
        compressor: Compressor,
        model_size: str = "micro",
        model_overrides: Mapping[str, Any] | None = None,
        image_size: int = 64,
        num_views: int = 4,
        schedule: Mapping[str, Any] | ScheduleConfig | None = None,
        optimizer: Mapping[str, Any] | OptimizerConfig | None = None,
        condition_dropout: Mapping[str, Any] | ConditionDropout | None = None,
        sampling: Mapping[str, Any] | SamplingConfig | None = None,
        validation: Mapping[str, Any] | ValidationConfig | None = None,
        ema: Mapping[str, Any] | EMAConfig | None = None,
        noise_offset: float = 0.0,
        use_face_crop: bool = False,
        image_encoder: ImageEncoder | None = None,
        init_from: str | None = None,
        sharding: Mapping[str, Any] | None = None,
        sampler: SamplerFactory | None = None,
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            plain(
                {
                    "model_size": model_size,
                    "model_overrides": model_overrides or {},
                    "image_size": image_size,
                    "num_views": num_views,
                    "schedule": schedule,
                    "optimizer": optimizer,
                    "condition_dropout": condition_dropout,
                    "sampling": sampling,
                    "validation": validation,
                    "ema": ema,
                    "noise_offset": noise_offset,
                    "use_face_crop": use_face_crop,
                    "init_from": init_from,
                    "sharding": sharding,
                }
            )
        )
        self.compressor = compressor
        self.compressor.requires_grad_(False)
        self.image_size = image_size
        self.num_views = num_views
        self.image_encoder = image_encoder
        self.model_config = self._model_config(model_size, dict(model_overrides or {}))
        self.model = Pippo(self.model_config)
        if init_from:
            # before the EMA copy, so the average starts from the previous stage's weights
            self.load_previous_stage(init_from)
        self.schedule = NoiseSchedule(coerce(ScheduleConfig, schedule, "stage.schedule"))
        self.optimizer_config = coerce(OptimizerConfig, optimizer, "stage.optimizer")
        self.condition_dropout = coerce(
            ConditionDropout, condition_dropout, "stage.condition_dropout"
        )
        self.sampling = coerce(SamplingConfig, sampling, "stage.sampling")
        #: builds the validation sampler (the `sampler` config group; DDIM when not given). Not a
        #: hyperparameter: it changes no weight, and pippo-generate / pippo-eval pick their own.
        self.sampler_factory = sampler or DDIMSampler
        self.build_sampler(self.sampling)  # a bad choice fails now, not at the first validation
        self.validation_config = coerce(ValidationConfig, validation, "stage.validation")
        #: PSNR / SSIM (/ LPIPS) of the sampled validation views, per view and averaged
        self.val_image_metrics = ImageMetrics(lpips=self.validation_config.lpips)
        self.val_reprojection = (
            ReprojectionError(**self.validation_config.reprojection_options)
            if self.validation_config.reprojection
            else None
        )
        self.ema_config = coerce(EMAConfig, ema, "stage.ema")
        self.ema = (
            EMA(self.model, self.ema_config.decay, self.ema_config.warmup)
            if self.ema_config.enabled
            else None
        )
        self.noise_offset = noise_offset
        #: batch["face_crop"] joins as a second reference view (see `join_face_crop`)
        self.use_face_crop = use_face_crop
        self.loss_fn = DiffusionLoss()
        #: torch.compile the model (and its EMA shadow) in `configure_model`; not a hyper-parameter
        #: of the weights, so a checkpoint loaded for inference runs eagerly
        self.compile_model = compile_model

    # ----------------------------------------------------------------- construction
    def _model_config(self, size: str, overrides: dict[str, Any]) -> PippoConfig:
        factor = self.compressor.downsample_factor
        if self.image_size % factor != 0:
            raise ConfigError(
                f"image_size={self.image_size} is not divisible by the compressor's "
                f"downsample factor {factor}"
            )
        latent_size = self.image_size // factor
        pinned_fields = (
            "latent_size",
            "latent_channels",
            "use_cameras",
            "use_control",
            "use_reference",
            "global_embedding_dim",
        )
        for pinned in pinned_fields:
            if pinned in overrides:
                raise ConfigError(
                    f"model_overrides.{pinned} is set by the stage and compressor, not by hand"
                )
        try:
            return pippo_config(
                size,
                latent_size=latent_size,
                latent_channels=self.compressor.latent_channels,
                use_cameras=self.use_cameras,
                use_control=self.use_control,
                use_reference=self.use_reference,
                global_embedding_dim=self.image_encoder.embedding_dim if self.image_encoder else 0,
                **overrides,
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"model (size={size!r}, image_size={self.image_size}, latent_size={latent_size}): {err}"
            ) from err

    def load_previous_stage(self, path: str) -> None:
        """Start from another stage's checkpoint (`init_from`): every weight both models share
        is copied (EMA weights where the checkpoint has them); modules this stage adds keep
        their zero-output initialisation, so the new model first predicts what the old one did.
        Anything else missing, misshapen or extra is refused (stages.init_from.fit_problems).
        """
        source = load_stage_weights(path)
        own = self.model.state_dict()
        problems = fit_problems(
            {k: tuple(v.shape) for k, v in source.items()},
            {k: tuple(v.shape) for k, v in own.items()},
        )
        if problems:
            model = f"{self.hparams['model_size']} model at {self.image_size} px"
            raise ConfigError(misfit_message(path, problems, model))
        self.model.load_state_dict(source, strict=False)
        new = sorted({k.split(".")[0] for k in set(own) - set(source)})
        log.info("init_from %s: %d tensors loaded; new modules: %s", path, len(source), new)

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self.model)

    # ----------------------------------------------------------------- data → latents
    @torch.no_grad()
    def encode_views(self, images: Tensor) -> Tensor:
        """[B, V, 3, H, W] in [-1, 1] → [B, V, C, h, w] scaled latents."""
        b = images.shape[0]
        latents = self.compressor.encode(rearrange(images, "b v c h w -> (b v) c h w"))
        return rearrange(latents, "(b v) c h w -> b v c h w", b=b)

    @torch.no_grad()
    def decode_views(self, latents: Tensor) -> Tensor:
        """[B, V, C, h, w] → [B, V, 3, H, W] in [-1, 1]."""
        b = latents.shape[0]
        images = self.compressor.decode(rearrange(latents, "b v c h w -> (b v) c h w"))
        return rearrange(images, "(b v) c h w -> b v c h w", b=b).clamp(-1, 1)

    def to_latents(self, batch: Batch) -> LatentBatch:
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
                anchors = self.encode_views(torch.cat(views, dim=1))
        ref_latent = None
        if ref:
            ref_latent = batch["ref_latent"] if cached else self.encode_views(batch["ref_image"])
        latents = LatentBatch(
            x0=batch["latents"] if cached else self.encode_views(images),
            ref_latent=ref_latent,
            cam_pose=batch["cam_pose"] if self.use_cameras else None,
            ref_cam_pose=batch["ref_cam_pose"] if self.use_cameras and ref else None,
            plucker=batch["plucker"] if self.use_control else None,
            ref_plucker=batch["ref_plucker"] if self.use_control and ref else None,
            anchor_latents=anchors,
            global_embedding=self.embed_image(batch),
        )
        return self.join_face_crop(batch, latents) if self.use_face_crop else latents

    @torch.no_grad()
    def embed_image(self, batch: Batch) -> Tensor | None:
        """The frozen encoder's global embedding [B, E] of `batch[embed_key]`'s first view."""
        if self.image_encoder is None:
            return None
        return self.image_encoder(batch[self.embed_key][:, 0])

    def join_face_crop(self, batch: Batch, latents: LatentBatch) -> LatentBatch:
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
                else self.encode_views(face_anchor)
            )
        return dataclasses.replace(
            latents,
            ref_latent=join(latents.ref_latent, self.encode_views(batch["face_crop"])),
            ref_cam_pose=join(
                latents.ref_cam_pose, batch.get("face_cam_pose", latents.ref_cam_pose)
            ),
            ref_plucker=join(latents.ref_plucker, batch.get("face_plucker", latents.ref_plucker)),
            anchor_latents=join(latents.anchor_latents, anchor),
        )

    # ----------------------------------------------------------------- denoiser
    def denoise(
        self,
        latents: LatentBatch,
        x_t: Tensor,
        t: Tensor,
        drops: Mapping[str, Tensor],
        attention_scale: float | None = None,
        use_ema: bool = False,
    ) -> Tensor:
        """Model prediction for noisy targets `x_t` [B, NV, C, h, w] at timesteps `t` [B]."""
        return self.network(use_ema)(
            x_t,
            t,
            latents.ref_latent,
            cam_pose=latents.cam_pose,
            ref_cam_pose=latents.ref_cam_pose,
            plucker=latents.plucker,
            ref_plucker=latents.ref_plucker,
            anchor_latents=latents.anchor_latents,
            drop_ref=drops.get("ref"),
            drop_cameras=drops.get("cameras"),
            drop_control=drops.get("control"),
            attention_scale=attention_scale,
            global_embedding=latents.global_embedding,
            # the global embedding is the reference photo's (P1: the image's own) description
            drop_global=drops.get("ref"),
        )

    def network(self, use_ema: bool) -> Pippo:
        """The EMA weights when asked for and kept, else the trained ones."""
        return self.ema.shadow if (use_ema and self.ema is not None) else self.model

    def sample_condition_drops(self, batch_size: int) -> dict[str, Tensor]:
        """Per-sample CFG dropout masks: each condition on its own, plus all together."""
        p = self.condition_dropout
        drop_all = torch.rand(batch_size, device=self.device) < p.all
        return {
            name: drop_all | (torch.rand(batch_size, device=self.device) < getattr(p, name))
            for name in ("ref", "cameras", "control")
        }

    # ----------------------------------------------------------------- training
    def diffusion_loss(
        self,
        latents: LatentBatch,
        t: Tensor,
        noise: Tensor,
        drops: Mapping[str, Tensor],
        use_ema: bool = False,
    ) -> Tensor:
        x_t = self.schedule.add_noise(latents.x0, noise, t)
        prediction = self.denoise(latents, x_t, t, drops, use_ema=use_ema)
        return self.loss_fn(prediction, self.schedule.training_target(latents.x0, noise, t))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        latents = self.to_latents(batch)
        b = latents.batch_size
        t = self.schedule.sample_timesteps(b, device=self.device)
        noise = offset_noise(latents.x0.shape, self.noise_offset, None, self.device)
        loss = self.diffusion_loss(latents, t, noise, self.sample_condition_drops(b))
        # averaged over ranks only on the steps that reach the loggers (and the last): an
        # all-reduce on every step would stall each one for a value nobody reads
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=self.loss_sync_step())
        return loss

    def loss_sync_step(self) -> bool:
        """Whether this step's `train/loss` is all-reduced: when the loggers record it (every
        `log_every_n_steps`) and on the last step (the final metric a sweep reads)."""
        trainer = self._trainer
        if trainer is None:  # a step run by hand (tests, notebooks): nothing to sync with
            return False
        step = trainer.global_step + 1  # the step this batch completes
        every = max(int(trainer.log_every_n_steps), 1)
        max_steps = trainer.max_steps
        return step % every == 0 or (max_steps is not None and 0 < max_steps <= step)

    def on_fit_start(self) -> None:
        # a latent cache written by another compressor must not be trained on
        datamodule = getattr(self.trainer, "datamodule", None)
        cache_identity = getattr(datamodule, "latent_identity", None)
        check_latent_identity(cache_identity, self.compressor)
        self.release_unused_compressor_parts(latents_cached=cache_identity is not None)

    def release_unused_compressor_parts(self, latents_cached: bool) -> None:
        """Training and validation from a latent cache never encode: free the VAE encoder
        (~34M weights for SDXL's). The decoder stays for validation sampling."""
        if latents_cached and not self.use_face_crop:  # face crops are encoded per step
            self.compressor.release_encoder()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after the weights change, not in on_train_batch_end: checkpoint callbacks
        # save in their on_train_batch_end, which runs before the module's, and a checkpoint of
        # step k must hold step k's average for a resumed run to match (issue #7)
        if self.ema is not None and self._weights_were_stepped():
            self.ema.update(self.model)

    def _weights_were_stepped(self) -> bool:
        """False when no trainable weight had a gradient at this optimizer step.

        The non-finite guard skips a NaN/Inf step by dropping every gradient (AdamW then leaves
        each weight and its moments untouched); the average must stay put too, or it would
        move and count an update for a step that never happened. The guard's verdict is
        reduced over ranks, so every rank takes the same branch here.
        """
        return any(p.grad is not None for p in self.model.parameters() if p.requires_grad)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the same on every rank already (DDP averages, FSDP shards are reduced once inside)
        norm = gradient_norm(self.model.parameters())
        if norm is not None:
            self.log("train/grad_norm", norm)

    def configure_model(self) -> None:
        # FSDP2 (ModelParallelStrategy): shard the model and EMA once the device mesh exists;
        # nothing under DDP or on one device. See stages/sharding.py.
        configure_sharding(self)
        if self.compile_model:
            # the EMA shadow samples at validation, so it is compiled too
            compile_networks(self.model, *([self.ema.shadow] if self.ema is not None else []))

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

    # ----------------------------------------------------------------- sampling
    @property
    def train_tokens(self) -> int:
        """Tokens in one training sequence (target views + reference): N_train of attention biasing."""
        num_refs = (2 if self.use_face_crop else 1) if self.use_reference else 0
        return (self.num_views + num_refs) * self.model_config.tokens_per_view

    def attention_scale(
        self, sampling: SamplingConfig, num_views: int, num_refs: int = 1
    ) -> float | None:
        """Softmax scale for sampling `num_views` views; None (plain 1/sqrt(d)) without biasing."""
        if sampling.attention_gamma is None:
            return None
        infer_tokens = (num_views + num_refs) * self.model_config.tokens_per_view
        return attention_softmax_scale(
            sampling.attention_gamma, infer_tokens, self.train_tokens, self.model_config.head_dim
        )

    def guidance_scale(self, sampling: SamplingConfig, batch: Batch) -> float | Tensor:
        """Constant CFG, or per-view scales [B, NV] from each view's azimuth to the reference."""
        if sampling.cfg_schedule == "constant":
            return sampling.cfg_scale
        return bump_cfg_scale(batch["azimuth_deg"], sampling.cfg_scale, sampling.cfg_floor).to(
            self.device
        )

    def build_sampler(
        self, sampling: SamplingConfig, sampler: SamplerFactory | None = None
    ) -> Sampler:
        """The sampler for `sampling` (from `sampler`, else the stage's own); ConfigError if not."""
        factory = sampler or self.sampler_factory
        try:
            # its timesteps and tables are small CPU tensors, also when the stage is built on the
            # meta device (preflight) or under another default device
            with torch.device("cpu"):
                return factory(self.schedule, sampling.sampler_config())
        except ValueError as err:
            raise ConfigError(f"sampling: {err}") from err

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        sampling: SamplingConfig | None = None,
        progress: bool = False,
        use_ema: bool = True,
        sampler: SamplerFactory | None = None,
    ) -> Tensor:
        """Sample the target views of `batch`: → images [B, NV, 3, H, W] in [-1, 1].

        `sampler` builds the sampler (DDIM, DPM-Solver++ 2M, UniPC, ...; default: the stage's).
        Any number of target views works; with `sampling.attention_gamma` set, attention is
        biased for the sequence length against the trained one.
        """
        sampling = sampling or self.sampling
        latents = self.to_latents(batch)
        b, num_views = latents.x0.shape[:2]
        attention_scale = self.attention_scale(
            sampling, num_views, 0 if latents.ref_latent is None else latents.ref_latent.shape[1]
        )
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
        # per-sample starting noise: a subject's views do not depend on its batch or rank
        indices = batch.get("index")
        indices = torch.arange(b) if indices is None else torch.as_tensor(indices)
        noise = sample_noise(latents.x0.shape, indices, offset=sampling.seed).to(self.device)
        none = torch.zeros(b, dtype=torch.bool, device=self.device)

        def denoiser(x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
            times = x_t.shape[0] // b
            stacked = latents.repeat(times)
            drops = {
                name: (uncond if name in sampling.uncond_drops else none.repeat(times))
                for name in ("ref", "cameras", "control")
            }
            return self.denoise(stacked, x_t, t, drops, attention_scale, use_ema=use_ema)

        x0 = self.build_sampler(sampling, sampler).sample(
            denoiser,
            noise,
            cfg_scale=self.guidance_scale(sampling, batch),
            generator=generator,
            progress=progress,
        )
        return self.decode_views(x0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which stage wrote it: loaders then refuse another stage's checkpoint by name instead
        # of failing on its first missing tensor (see inference.load_stage).
        checkpoint[STAGE_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor] | None:
        latents = self.to_latents(batch)
        b = latents.batch_size
        no_drops = {
            name: torch.zeros(b, dtype=torch.bool, device=self.device)
            for name in ("ref", "cameras", "control")
        }
        # Fixed timesteps and noise seeded by sample index make the validation loss comparable
        # across steps and independent of how samples are batched or sharded over ranks.
        losses = []
        for step in self.validation_config.loss_timesteps:
            t = torch.full((b,), step, dtype=torch.long, device=self.device)
            noise = sample_noise(latents.x0.shape, batch["index"], offset=step).to(self.device)
            losses.append(self.diffusion_loss(latents, t, noise, no_drops, use_ema=True))
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


#: Checkpoint entry naming the stage class that saved it ("package.module.Class").
STAGE_CLASS_KEY = "pippo_stage_class"


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


def sample_noise(shape: torch.Size, indices: Tensor, offset: int = 0) -> Tensor:
    """Gaussian noise [B, ...] where row i depends only on (indices[i], offset)."""
    rows = []
    for index in indices.tolist():
        generator = torch.Generator(device="cpu").manual_seed(1_000_003 * int(index) + offset)
        rows.append(torch.randn(shape[1:], generator=generator))
    return torch.stack(rows)


def psnr(images: Tensor, target: Tensor) -> Tensor:
    """Mean per-view PSNR (dB) of images in [-1, 1]."""
    a = rearrange((images.float() + 1) / 2, "b v c h w -> (b v) c h w")
    b = rearrange((target.float() + 1) / 2, "b v c h w -> (b v) c h w")
    return peak_signal_noise_ratio(
        a, b, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
    )
