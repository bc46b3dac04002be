"""Sampling a stage's target views: attention biasing, guidance scales, the sampler (a mixin of
:class:`~pippo_lightning.stages.base.PippoStage`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pippo_lightning.conditioning.dropout import guidance_drops
from pippo_lightning.diffusion.attention_biasing import attention_softmax_scale
from pippo_lightning.diffusion.guidance import bump_cfg_scale
from pippo_lightning.diffusion.sampling import Sampler, SamplerFactory
from pippo_lightning.errors import ConfigError
from pippo_lightning.stages.config import SamplingConfig

Batch = dict[str, Any]


class StageSampling:
    """Generating views with the stage's (or a given) sampler and classifier-free guidance."""

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

        def denoiser(x_t: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
            times = x_t.shape[0] // b
            stacked = latents.repeat(times)
            drops = guidance_drops(uncond, sampling.uncond_drops, b)
            return self.denoise(stacked, x_t, t, drops, attention_scale, use_ema=use_ema)

        x0 = self.build_sampler(sampling, sampler).sample(
            denoiser,
            noise,
            cfg_scale=self.guidance_scale(sampling, batch),
            generator=generator,
            progress=progress,
        )
        return self.decode_views(x0)


def sample_noise(shape: torch.Size, indices: Tensor, offset: int = 0) -> Tensor:
    """Gaussian noise [B, ...] where row i depends only on (indices[i], offset)."""
    rows = []
    for index in indices.tolist():
        generator = torch.Generator(device="cpu").manual_seed(1_000_003 * int(index) + offset)
        rows.append(torch.randn(shape[1:], generator=generator))
    return torch.stack(rows)
