"""The one LightningModule all Pippo stages share: loss, optimizer, sampling, validation.

A stage differs only in which conditions its model has (cameras, ControlMLP) and so which
entries of the batch it reads; everything else — the noising, the classifier-free-guidance
dropout masks, AdamW with warm-up, validation sampling — lives here once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.checkpoints.reading import STAGE_CLASS_KEY
from pippo_lightning.compressors.base import Compressor
from pippo_lightning.conditioning.dropout import (
    ConditionDropout,
    network_drop_arguments,
    sample_condition_drops,
)
from pippo_lightning.conditioning.latents import LatentBatch
from pippo_lightning.data.latent_cache import check_latent_identity
from pippo_lightning.diffusion.ddim import DDIMSampler
from pippo_lightning.diffusion.loss import DiffusionLoss, offset_noise
from pippo_lightning.diffusion.sampling import SamplerFactory
from pippo_lightning.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pippo_lightning.metrics.image import ImageMetrics
from pippo_lightning.metrics.reprojection import ReprojectionError
from pippo_lightning.models.image_encoders import ImageEncoder
from pippo_lightning.models.pippo import Pippo, PippoConfig, count_parameters, pippo_config
from pippo_lightning.stages.compilation import compile_networks
from pippo_lightning.stages.config import (
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
from pippo_lightning.stages.latents import StageLatents
from pippo_lightning.stages.optimization import StageOptimization
from pippo_lightning.stages.sampling import StageSampling
from pippo_lightning.stages.sharding import configure_sharding, gradient_norm
from pippo_lightning.stages.validation import StageValidation

Batch = dict[str, Any]
log = logging.getLogger(__name__)

#: The checkpoint entry holding the stage's training random stream (`PippoStage.training_rng`).
TRAINING_RNG_KEY = "pippo_training_rng"


def load_stage_weights(path: str) -> dict[str, Tensor]:
    """The Pippo weights of a stage checkpoint (EMA where present), keys relative to the model."""
    if not Path(path).is_file():
        raise ConfigError(f"init_from={path}: no such checkpoint file")
    return model_weights(load_torch_file(path), path)


class PippoStage(
    StageLatents, StageSampling, StageOptimization, StageValidation, L.LightningModule
):
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
        loss: torch.nn.Module | None = None,
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
        #: the training loss (the `loss` config group; the paper's MSE when not given). Not a
        #: hyperparameter: it changes no weight, so a checkpoint loaded for sampling needs none.
        self.loss_fn = loss if loss is not None else DiffusionLoss()
        #: torch.compile the model (and its EMA shadow) in `configure_model`; not a hyper-parameter
        #: of the weights, so a checkpoint loaded for inference runs eagerly
        self.compile_model = compile_model
        #: the random stream of the training steps (timesteps, noise, dropout masks), on the
        #: CPU: seeded at fit start from the run's seed, saved in and restored from checkpoints.
        #: Validation and loader start-up draw from the global generators, so they cannot shift
        #: it, and a resumed run continues it exactly.
        self.training_rng = torch.Generator(device="cpu")
        self._training_rng_restored = False

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
            attention_scale=attention_scale,
            global_embedding=latents.global_embedding,
            **network_drop_arguments(drops),
        )

    def network(self, use_ema: bool) -> Pippo:
        """The EMA weights when asked for and kept, else the trained ones."""
        return self.ema.shadow if (use_ema and self.ema is not None) else self.model

    def sample_condition_drops(self, batch_size: int) -> dict[str, Tensor]:
        """Per-sample CFG dropout masks: each condition on its own, plus all together."""
        return sample_condition_drops(
            self.condition_dropout, batch_size, self.device, self.training_rng
        )

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
        latents = self.to_latents(batch, self.training_rng)
        b = latents.batch_size
        rng = self.training_rng
        t = self.schedule.sample_timesteps(b, generator=rng, device=self.device)
        noise = offset_noise(latents.x0.shape, self.noise_offset, rng, self.device)
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
        if not self._training_rng_restored:
            # the seed `seed_everything` set (cli.train seeds every run): a fresh run's stream
            self.training_rng.manual_seed(torch.initial_seed())
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which stage wrote it: loaders then refuse another stage's checkpoint by name instead
        # of failing on its first missing tensor (see inference.load_stage).
        checkpoint[STAGE_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[TRAINING_RNG_KEY] = self.training_rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(TRAINING_RNG_KEY)
        if state is not None:  # resuming: continue the stream where the checkpoint left it
            self.training_rng.set_state(state)
            self._training_rng_restored = True
