"""`model.compile=true`: the stage compiles its networks in place, keys and results unchanged."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.stages import PostTrainStage
from pippo_lightning.stages.compilation import is_compiled


def tiny_stage(compile_model: bool) -> PostTrainStage:
    torch.manual_seed(0)
    return PostTrainStage(
        compressor=IdentityCompressor(space_to_depth=4),
        image_size=32,
        num_views=2,
        compile_model=compile_model,
    )


def test_model_compile_reaches_the_stage_from_the_config(compose_config) -> None:
    assert compose_config().stage.compile_model is False  # off by default
    cfg = compose_config("model.compile=true")
    stage = instantiate(cfg.stage, compressor=instantiate(cfg.compressor))
    assert stage.compile_model is True
    assert not is_compiled(stage.model)  # compiled in configure_model, not at construction


def test_configure_model_compiles_model_and_ema_keeping_the_keys() -> None:
    eager, compiled = tiny_stage(False), tiny_stage(True)
    eager.configure_model()
    compiled.configure_model()
    assert not is_compiled(eager.model) and not is_compiled(eager.ema.shadow)
    assert is_compiled(compiled.model) and is_compiled(compiled.ema.shadow)
    # checkpoints of compiled and eager runs are interchangeable
    assert list(compiled.state_dict()) == list(eager.state_dict())
    # a checkpoint loaded for inference runs eagerly
    assert "compile_model" not in compiled.hparams


@pytest.mark.slow
def test_compiled_model_predicts_what_the_eager_model_predicts() -> None:
    eager, compiled = tiny_stage(False), tiny_stage(True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    b, nv, c, s = 2, 2, 48, 8
    inputs = {
        "x_t": torch.randn(b, nv, c, s, s),
        "t": torch.tensor([10, 900]),
        "ref_latent": torch.randn(b, 1, c, s, s),
        "cam_pose": torch.randn(b, nv, 16),
        "ref_cam_pose": torch.randn(b, 1, 16),
        "plucker": torch.randn(b, nv, 6, 32, 32),
        "ref_plucker": torch.randn(b, 1, 6, 32, 32),
        "anchor_latents": torch.randn(b, nv + 1, c, s, s),
    }
    with torch.no_grad():
        expected = eager.model(**inputs)
        found = compiled.model(**inputs)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
