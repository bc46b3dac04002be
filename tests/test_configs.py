"""Every config group option and every experiment composes, and objects instantiate from them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from pippo_lightning.cli.common import CONFIG_DIR
from pippo_lightning.diffusion.loss import DiffusionLoss

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONFIG_DIR / "hardware").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("stage", ["p1", "m2", "p3"])
@pytest.mark.parametrize("resolution", options("resolution"))
def test_stage_by_resolution_composes(compose_config, stage: str, resolution: str) -> None:
    cfg = compose_config(f"stage={stage}", f"resolution={resolution}")
    assert cfg.image_size == int(resolution.removesuffix("px"))
    assert cfg.num_views == cfg.views[stage]
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_config, experiment: str) -> None:
    extra = ["stage.init_from=/ckpt/previous.ckpt", "data.root=/data"]
    cfg = compose_config(f"experiment={experiment}", *extra)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["stage"]["_target_"].startswith("pippo_lightning.stages.")


@pytest.mark.parametrize("hardware", HARDWARE)
def test_every_hardware_preset_composes(compose_config, hardware: str) -> None:
    cfg = compose_config(f"hardware={hardware}")
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("stage", ["p1", "m2", "p3"])
def test_stages_instantiate_from_their_configs(compose_config, stage: str) -> None:
    cfg = compose_config(f"stage={stage}", "image_size=16")
    compressor = instantiate(cfg.compressor)
    module = instantiate(cfg.stage, compressor=compressor)
    assert (
        type(module).__name__
        == {"p1": "PreTrainStage", "m2": "MidTrainStage", "p3": "PostTrainStage"}[stage]
    )
    assert module.num_views == cfg.views[stage]


def test_paper_settings_are_the_stage_defaults(compose_config) -> None:
    cfg = compose_config("experiment=paper_p3_512", "stage.init_from=/x.ckpt")
    opt = cfg.stage.optimizer
    assert (opt.lr, list(opt.betas), opt.eps, opt.warmup_steps) == (1e-4, [0.9, 0.98], 1e-6, 1000)
    assert cfg.trainer.gradient_clip_val == 1.0
    assert cfg.stage.schedule.prediction == "eps" and cfg.stage.schedule.shift_ratio == 4.0
    assert cfg.stage.condition_dropout.ref == 0.2
    assert cfg.num_views == 12


class HalvedLoss(DiffusionLoss):
    """A stand-in loss part for the test below: half the paper's MSE."""

    def forward(self, prediction: Tensor, target: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return 0.5 * super().forward(prediction, target, *args, **kwargs)


def test_the_loss_is_an_engine_part_chosen_on_the_command_line(compose_config) -> None:
    """`loss` is a `_target_` config group like `sampler`: the stage trains with what it names
    (the paper's MSE by default), and it is no hyperparameter of the weights."""
    default = compose_config("image_size=16", "num_views=2")
    stage = instantiate(default.stage, compressor=instantiate(default.compressor))
    assert type(stage.loss_fn) is DiffusionLoss
    assert "loss" not in stage.hparams

    chosen = compose_config(
        "image_size=16", "num_views=2", "loss._target_=tests.test_configs.HalvedLoss"
    )
    stage = instantiate(chosen.stage, compressor=instantiate(chosen.compressor))
    assert isinstance(stage.loss_fn, HalvedLoss)
    prediction, target = torch.ones(2, 3), torch.zeros(2, 3)
    assert stage.loss_fn(prediction, target).item() == 0.5
