"""Issue #15: the ablation variants, their configs, and the report (fast; the pipeline end to end
is the slow test at the bottom)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pippo_lightning.models.pippo import Pippo, pippo_config
from pippo_lightning.reproduce.report import (
    BASELINES,
    METRICS,
    VARIANTS,
    ResultsSchemaError,
    aggregate_seeds,
    build_results,
    check_results,
    markdown,
    write_results,
)
from pippo_lightning.studio.synthetic import StudioConfig, studio_cameras

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("tiny", "cpu", "gpu")


# ------------------------------------------------------------------------------ variant configs


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_composes_with_every_preset(compose_config, variant, preset) -> None:
    cfg = compose_config(f"experiment=ablation/{variant}", f"+ablation_preset={preset}")
    assert cfg.reproduce.variant == variant
    assert cfg.reproduce.eval_views >= 2 and cfg.num_views >= 1
    assert cfg.run_name == f"ablation_{variant}_s0"


def _stage(compose_config, variant: str):
    cfg = compose_config(f"experiment=ablation/{variant}", "+ablation_preset=tiny")
    return cfg, instantiate(cfg.stage, compressor=instantiate(cfg.compressor))


def test_variants_build_what_they_claim(compose_config) -> None:
    """Same data, sizes, steps and seed; only the claimed part differs."""
    built = {variant: _stage(compose_config, variant) for variant in VARIANTS}
    full_cfg, full = built["full"]
    for variant, (cfg, stage) in built.items():
        for key in ("image_size", "num_views", "seed", "data", "compressor", "trainer"):
            ours, theirs = (OmegaConf.select(c, key) for c in (cfg, full_cfg))
            plain = (
                OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x
                for x in (ours, theirs)
            )
            assert next(plain) == next(plain), (variant, key)
        assert stage.model.camera_mlp is not None and stage.model.ref_encoder is not None
    assert full.model.control_mlp.use_anchor and full.model.control_mlp.use_plucker
    no_anchor = built["no_anchor"][1].model.control_mlp
    assert not no_anchor.use_anchor and no_anchor.use_plucker
    no_plucker = built["no_plucker"][1].model.control_mlp
    assert no_plucker.use_anchor and not no_plucker.use_plucker
    assert no_plucker.plucker_siren is None
    assert built["no_controlmlp"][1].model.control_mlp is None
    assert type(built["no_controlmlp"][1]).__name__ == "MidTrainStage"
    # an absent input has no channels at all (not a zero-fed channel)
    channels = {
        v: built[v][1].model.control_mlp.encoder.conv_in.in_channels
        for v in ("full", "no_anchor", "no_plucker")
    }
    latent = full.model_config.latent_channels
    assert channels["full"] - channels["no_anchor"] == latent
    assert channels["full"] - channels["no_plucker"] == full.model_config.plucker_features


def _inputs(model: Pippo, generator: torch.Generator) -> dict[str, torch.Tensor]:
    cfg = model.config
    b, nv, c, s = 2, 3, cfg.latent_channels, cfg.latent_size
    pix = 2 * s

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "x_t": rand(b, nv, c, s, s),
        "t": torch.tensor([10, 500]),
        "ref_latent": rand(b, 1, c, s, s),
        "cam_pose": rand(b, nv, cfg.camera_features),
        "ref_cam_pose": rand(b, 1, cfg.camera_features),
        "plucker": rand(b, nv, 6, pix, pix),
        "ref_plucker": rand(b, 1, 6, pix, pix),
        "anchor_latents": rand(b, nv + 1, c, s, s),
    }


def _trained_like(**overrides) -> Pippo:
    """A tiny Pippo whose zero-initialised heads are random, as after training: at init the
    ControlMLP's output is zero whatever it reads, and a perturbation test would prove nothing."""
    torch.manual_seed(0)
    model = Pippo(pippo_config("micro", dim=32, num_heads=2, latent_size=4, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.abs().sum() == 0:
                param.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.mark.parametrize(
    ("overrides", "ignored", "read"),
    [
        ({"control_anchor": False}, ("anchor_latents",), ("plucker", "ref_plucker")),
        ({"control_plucker": False}, ("plucker", "ref_plucker"), ("anchor_latents",)),
        ({}, (), ("anchor_latents", "plucker", "ref_plucker")),
    ],
)
def test_an_absent_control_input_cannot_change_the_output(overrides, ignored, read) -> None:
    model = _trained_like(**overrides)
    inputs = _inputs(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(**inputs)
        for name in ignored + read:
            perturbed = dict(inputs, **{name: inputs[name] + 3.0 * torch.randn_like(inputs[name])})
            changed = (model(**perturbed) - base).abs().max().item()
            if name in ignored:
                assert changed == 0.0, f"{overrides}: output moved by {changed} with {name}"
            else:
                assert changed > 1e-4, f"{overrides}: {name} should reach the output"


def test_absent_inputs_may_be_none_and_an_empty_control_mlp_is_refused() -> None:
    model = _trained_like(control_anchor=False, control_plucker=False)
    inputs = _inputs(model, torch.Generator().manual_seed(2))
    inputs.update(anchor_latents=None, plucker=None, ref_plucker=None)
    with torch.no_grad():
        assert model(**inputs).shape == inputs["x_t"].shape
    with pytest.raises(ValueError, match="control_anchor or control_xt"):
        pippo_config("micro", control_anchor=False, control_xt=False)


# ------------------------------------------------------------------------------- the studio


def test_head_framing_centres_each_subject_and_keeps_old_studios_hashes() -> None:
    default = StudioConfig()
    assert "head_target_offset" not in default.to_dict()  # old manifests still match
    framed = StudioConfig(head_target_offset=-0.1, fov_deg=14.0)
    assert framed.to_dict()["head_target_offset"] == -0.1
    assert StudioConfig.from_dict(framed.to_dict()) == framed
    for head in (1.5, 1.8):
        cams = studio_cameras(framed, head_height=head)
        # the optical axis (camera z in world) passes through (0, head - 0.1, 0)
        e = cams["extrinsics"][0]
        rotation, translation = e[:3, :3], e[:3, 3]
        centre = -rotation.T @ translation
        axis = rotation[2]
        t = -centre[0] / axis[0] if abs(axis[0]) > 1e-6 else -centre[2] / axis[2]
        hit = centre + t * axis
        assert hit[1].item() == pytest.approx(head - 0.1, abs=1e-4)
    fixed = studio_cameras(default, head_height=1.8)["extrinsics"]
    assert torch.equal(fixed, studio_cameras(default, head_height=1.5)["extrinsics"])


# ------------------------------------------------------------------------------- the report


def _fake_rows() -> dict:
    def metrics(psnr: float, re_px: float | None) -> dict:
        return {
            "psnr": psnr,
            "ssim": 0.5,
            "lpips": None,
            "re_px": re_px,
            "re_pct": None if re_px is None else re_px / 0.64,
            "re_pairs": 0 if re_px is None else 10,
            "re_pairs_tried": 12,
            "gt_re_px": 0.3,
            "gt_re_pct": 0.47,
            "gt_re_pairs": 12,
        }

    return {
        "full": {0: metrics(20.0, 1.0), 1: metrics(22.0, 2.0)},
        "no_anchor": {0: metrics(18.0, None)},
        "copy_reference": {0: metrics(12.0, 9.0)},
        "ground_truth": {0: {**metrics(0.0, 0.3), "psnr": None}},
    }


def test_report_from_fake_metrics_means_spreads_and_nulls(tmp_path) -> None:
    results = build_results("run", {"eval_views": 12, "seeds": [0, 1]}, _fake_rows())
    rows = results["variants"]
    assert list(rows) == [*VARIANTS, *BASELINES]
    assert rows["full"]["psnr"] == 21.0 and rows["full"]["spread"]["psnr"] == 1.0
    assert rows["full"]["re_px"] == 1.5 and rows["full"]["seeds"] == [0, 1]
    assert rows["no_anchor"]["re_px"] is None and rows["no_anchor"]["spread"]["psnr"] is None
    # variants that were never trained are rows of nulls, not missing
    assert all(rows["no_plucker"][key] is None for key in METRICS)
    assert rows["ground_truth"]["psnr"] is None
    json_path, md_path = write_results(tmp_path, results)
    loaded = json.loads(json_path.read_text())
    check_results(loaded)
    table = md_path.read_text()
    assert "| full | 21.00 ± 1.00 |" in table
    assert "| no_plucker | n/a |" in table
    assert "10 / 12" in table


def test_results_schema_refuses_what_it_does_not_describe() -> None:
    results = build_results("run", {}, _fake_rows())
    broken = json.loads(json.dumps(results))
    del broken["variants"]["no_controlmlp"]
    with pytest.raises(ResultsSchemaError, match="no_controlmlp"):
        check_results(broken)
    broken = json.loads(json.dumps(results))
    del broken["variants"]["full"]["re_pairs"]
    with pytest.raises(ResultsSchemaError, match="re_pairs"):
        check_results(broken)
    broken = json.loads(json.dumps(results))
    broken["variants"]["full"]["psnr"] = "21"
    with pytest.raises(ResultsSchemaError, match="psnr"):
        check_results(broken)
    with pytest.raises(ResultsSchemaError, match="unknown variant"):
        build_results("run", {}, {"no_everything": {0: {}}})
    assert aggregate_seeds({0: {"psnr": math.inf}})["psnr"] is None


def test_markdown_lists_attention_biasing() -> None:
    entry = {"views": 24, "off": {"psnr": 10.0}, "on": {"psnr": 11.0}, "ground_truth": {}}
    results = build_results("run", {"attention_gamma": 1.5}, _fake_rows(), {"2x": entry})
    text = markdown(results)
    assert "| 24 (2x) | off | 10.00 |" in text and "| 24 (2x) | on | 11.00 |" in text


# ------------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path) -> None:
    """Two variants, a few steps: the multirun, then the report and its structure."""
    run_dir = tmp_path / "reproduce" / "tiny_run"
    env_python = sys.executable
    train = subprocess.run(
        [
            env_python,
            "-m",
            "pippo_lightning.cli.train",
            "-m",
            "experiment=ablation/full,ablation/no_anchor",
            "+ablation_preset=tiny",
            "seed=0",
            "reproduce.group=tiny_run",
            f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={run_dir / 'jobs'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    report = subprocess.run(
        [env_python, "-m", "pippo_lightning.cli.reproduce", "report", str(run_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    check_results(results)
    rows = results["variants"]
    for trained in ("full", "no_anchor"):
        assert rows[trained]["psnr"] is not None and rows[trained]["seeds"] == [0]
    for untrained in ("no_plucker", "no_controlmlp"):
        assert all(rows[untrained][key] is None for key in METRICS)
    assert rows["copy_reference"]["psnr"] is not None
    assert rows["ground_truth"]["ssim"] == pytest.approx(1.0, abs=1e-3)
    assert set(results["attention_biasing"]) == {"2x"}
    assert {"off", "on"} <= set(results["attention_biasing"]["2x"])
    for name in ("re_by_azimuth", "subject_grid"):
        assert (run_dir / results["figures"][name]).is_file()
    assert "| variant |" in (run_dir / "results.md").read_text()
    assert list(run_dir.glob("wandb/offline-run-*"))


# --------------------------------------------------------------------------- sweeper objective


def test_train_returns_the_optimised_metric_for_sweepers() -> None:
    from pippo_lightning.cli.train import TrainResult, optimized_metric
    from pippo_lightning.stages.config import ConfigError

    def result(**metrics: float) -> TrainResult:
        return TrainResult(metrics=metrics, stage=None, datamodule=None, trainer=None)

    plain = OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": None}}})
    assert optimized_metric(plain, result(**{"val/loss": 0.5, "val/psnr": 20.0})) == 0.5
    monitored = OmegaConf.create({"callbacks": {"model_checkpoint": {"monitor": "val/psnr"}}})
    assert optimized_metric(monitored, result(**{"val/loss": 0.5, "val/psnr": 20.0})) == 20.0
    chosen = OmegaConf.create({"optimized_metric": "val/ssim", "callbacks": {}})
    assert optimized_metric(chosen, result(**{"val/ssim": 0.7, "val/psnr": 20.0})) == 0.7
    with pytest.raises(ConfigError, match="val/ssim"):
        optimized_metric(chosen, result(**{"val/psnr": 20.0}))
    assert optimized_metric(plain, result(**{"train/loss": 1.0})) is None  # no validation ran
