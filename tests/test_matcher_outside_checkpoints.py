"""The LightGlue matcher of the validation reprojection metric is no part of the stage's module
tree: its frozen weights are in no checkpoint and no DDP/FSDP parameter list, old checkpoints
that hold them still load, and it follows the metric to its device when it is used."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pippo_lightning.compressors.identity import IdentityCompressor
from pippo_lightning.metrics.matching import LightGlueMatcher
from pippo_lightning.stages import PostTrainStage

SIZE = 16


@pytest.fixture(scope="module")
def matcher_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seeded random kornia DISK and LightGlue-for-DISK weights, written locally (no download)."""
    import kornia.feature as KF

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("matcher")
    disk = KF.DISK()
    config = {k: v for k, v in KF.LightGlue.features["disk"].items() if k != "weights"}
    lightglue = KF.LightGlue(None, **config)
    disk_path, lightglue_path = directory / "disk.pth", directory / "lightglue.pth"
    torch.save({"extractor": disk.state_dict()}, disk_path)
    torch.save(lightglue.state_dict(), lightglue_path)
    return disk_path, lightglue_path


def lightglue_options(weights: tuple[Path, Path]) -> dict:
    disk_path, lightglue_path = weights
    return {
        "matcher": "lightglue",
        "min_matches": 1,
        "verify": "none",
        "matcher_options": {
            "disk_weights": str(disk_path),
            "lightglue_weights": str(lightglue_path),
            "max_keypoints": 64,
            "filter_threshold": 0.0,
        },
    }


def lightglue_stage(weights: tuple[Path, Path]) -> PostTrainStage:
    return PostTrainStage(
        compressor=IdentityCompressor(space_to_depth=2),
        model_size="micro",
        image_size=SIZE,
        num_views=2,
        ema={"enabled": False},
        validation={"reprojection": True, "reprojection_options": lightglue_options(weights)},
    )


def matcher_tensors(matcher: torch.nn.Module) -> set[int]:
    return {id(t) for t in itertools.chain(matcher.parameters(), matcher.buffers())}


def test_the_lightglue_matcher_is_in_no_state_dict_and_no_parameters_of_its_stage(
    matcher_weights: tuple[Path, Path],
) -> None:
    stage = lightglue_stage(matcher_weights)
    matcher = stage.val_reprojection.matcher
    assert isinstance(matcher, LightGlueMatcher)
    assert len(matcher_tensors(matcher)) > 100  # DISK + LightGlue

    assert not [key for key in stage.state_dict() if "matcher" in key]
    in_stage = {id(t) for t in itertools.chain(stage.parameters(), stage.buffers())}
    assert not matcher_tensors(matcher) & in_stage
    assert not [name for name, _ in stage.named_modules() if "matcher" in name]
    assert not any(p.requires_grad for p in matcher.parameters())  # frozen: no autograd either
    # A dtype cast of the stage (e.g. bf16-true precision) leaves the matcher in float32.
    stage.to(torch.float64)
    assert {p.dtype for p in matcher.parameters()} == {torch.float32}


def test_a_checkpoint_holding_matcher_weights_still_loads_strictly(
    matcher_weights: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Checkpoints saved while the matcher was a submodule hold its tensors under
    ``val_reprojection.matcher.``: they load (strictly, as Lightning loads) and are ignored."""
    saved = lightglue_stage(matcher_weights)
    old_state = dict(saved.state_dict())
    matcher_state = saved.val_reprojection.matcher.state_dict()
    old_state.update({f"val_reprojection.matcher.{k}": v for k, v in matcher_state.items()})

    restored = lightglue_stage(matcher_weights)
    with caplog.at_level(logging.INFO, logger="pippo_lightning.metrics.reprojection"):
        result = restored.load_state_dict(old_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert f"ignoring {len(matcher_state)} matcher tensors" in caplog.text
    for key, value in saved.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to move to")
def test_the_matcher_follows_the_metric_to_its_device_when_it_scores(
    matcher_weights: tuple[Path, Path],
) -> None:
    """The metric is moved (as Lightning moves the stage); its matcher moves at update()."""
    stage = lightglue_stage(matcher_weights)
    metric, matcher = stage.val_reprojection, stage.val_reprojection.matcher
    device = torch.device("cuda")
    metric.to(device)
    assert next(matcher.parameters()).device.type == "cpu"  # not moved by .to() itself
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (1, 2, 3, 32, 32), dtype=np.uint8))
    intrinsics = torch.tensor([[32.0, 0, 16], [0, 32, 16], [0, 0, 1]]).expand(1, 2, 3, 3)
    extrinsics = torch.eye(4).expand(1, 2, 4, 4).clone()
    extrinsics[0, 1, 0, 3] = 0.1
    metric.update(images.to(device), intrinsics.to(device), extrinsics.to(device))
    assert {p.device.type for p in matcher.parameters()} == {device.type}
    assert int(metric.compute()["pairs"]) == 1


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_trains_with_lightglue_validation_and_saves_no_matcher(
    matcher_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two gloo ranks under DDP (which fails on parameters that never get a gradient) train
    and validate with the LightGlue matcher; the checkpoints hold none of its weights."""
    from tests.test_distributed import OVERRIDES, TWO_CPU_RANKS, run_train

    disk_path, lightglue_path = matcher_weights
    matcher_options = (
        f"{{disk_weights:'{disk_path}',lightglue_weights:'{lightglue_path}',"
        "max_keypoints:64,filter_threshold:0.0}"
    )
    run_train(
        *OVERRIDES,
        *TWO_CPU_RANKS,
        "trainer.strategy=ddp",
        "logger=none",
        "stage.validation.reprojection=true",
        "stage.validation.reprojection_options.matcher=lightglue",
        "stage.validation.reprojection_options.min_matches=1",
        "stage.validation.reprojection_options.verify=none",
        f"+stage.validation.reprojection_options.matcher_options={matcher_options}",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        cwd=tmp_path,
    )
    (run,) = tmp_path.glob("outputs/train/runs/*")
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    # the matcher scored both validation subjects (one per rank, one pair of views each)
    assert metrics["val/reprojection_pairs"] == 2
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert not [key for key in state["state_dict"] if "matcher" in key]
