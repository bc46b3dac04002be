"""lightning-hydra-template habits (issue #17.1): `debug=` presets, `extras`, `hparams_search=`
with Optuna, git-ignored `configs/local/`, pre-commit wired to `make lint`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pippo_lightning.cli.common import CONFIG_DIR
from pippo_lightning.cli.run_setup import (
    apply_extras,
    config_tree_text,
    enforce_tags,
    require_plugins,
)
from pippo_lightning.cli.train import optimized_metric, train
from pippo_lightning.extras import MissingExtraError
from pippo_lightning.stages.config import ConfigError
from tests.conftest import REPO_ROOT, TINY_RUN

DEBUG_PRESETS = ["default", "fdr", "limit", "overfit", "profiler"]


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_every_debug_preset_composes_without_plus(compose_config, preset: str):
    cfg = compose_config(f"debug={preset}")
    assert cfg.task_name == "debug"
    assert cfg.logger is None
    assert cfg.trainer.detect_anomaly is True
    assert cfg.data.num_workers == 0


def test_debug_fdr_runs_one_batch_of_the_whole_loop(compose_config, tmp_path: Path):
    cfg = compose_config(*TINY_RUN, "debug=fdr")
    result = train(cfg)
    assert result.trainer.global_step == 1
    assert "train/loss" in result.metrics


def test_debug_profiler_writes_a_profile(compose_config, tmp_path: Path):
    cfg = compose_config(*TINY_RUN, "debug=profiler", "trainer.max_steps=2")
    train(cfg)
    (profile,) = (tmp_path / "run").glob("*profile*.txt")
    assert "run_training_batch" in profile.read_text()


def test_extras_print_the_config_tree_and_write_tags(compose_config, tmp_path: Path, capsys):
    cfg = compose_config("tags=[lr_scan,v2]")
    apply_extras(cfg, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "CONFIG" in printed and "trainer" in printed and "max_steps" in printed
    assert (tmp_path / "out" / "tags.log").read_text().split() == ["lr_scan", "v2"]
    saved = (tmp_path / "out" / "config_tree.log").read_text()
    assert saved.index("data") < saved.index("trainer")  # the template's order, data first


def test_config_tree_keeps_unresolvable_interpolations():
    cfg = OmegaConf.create({"paths": {"output_dir": "${not_set_yet}/run"}, "seed": 0})
    assert "${not_set_yet}/run" in config_tree_text(cfg)


def test_a_run_without_tags_is_refused_not_prompted(compose_config):
    with pytest.raises(ConfigError, match=r"tags=\[lr_scan\]"):
        enforce_tags(compose_config("tags=[]"))
    enforce_tags(compose_config())  # the default tag


def test_known_warnings_are_silenced_only_with_ignore_warnings(compose_config, tmp_path: Path):
    message = (
        "The dataloader, train_dataloader, does not have many workers which may be a bottleneck."
    )
    for ignore, expected in ((False, 1), (True, 0)):
        cfg = compose_config(f"extras.ignore_warnings={ignore}", "extras.print_config=false")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply_extras(cfg)
            warnings.warn(message, UserWarning, stacklevel=1)
        assert len(caught) == expected


def test_local_overrides_are_merged_and_git_ignored(tmp_path: Path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("default.yaml.local"))
    local = configs / "local"
    for stray in local.glob("*.yaml"):  # a developer's own file must not leak into the test
        stray.unlink()

    def composed_max_steps() -> int:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
            return compose(config_name="train", overrides=["paths.root_dir=."]).trainer.max_steps

    without = composed_max_steps()  # optional: no local file is fine
    (local / "default.yaml").write_text("# @package _global_\ntrainer:\n  max_steps: 7\n")
    assert composed_max_steps() == 7 != without
    GlobalHydra.instance().clear()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "src/pippo_lightning/configs/local/default.yaml"],
        cwd=REPO_ROOT,
    )
    assert ignored.returncode == 0, "src/pippo_lightning/configs/local/default.yaml: git-ignored"


def test_hparams_search_config_drives_optuna_over_the_returned_metric(compose_config):
    cfg = compose_config("hparams_search=optuna_lr_refdrop")
    assert cfg.optimized_metric == "val/psnr"

    class Result:
        metrics = {"val/psnr": 17.5, "val/loss": 0.2}

    assert optimized_metric(cfg, Result()) == 17.5  # what _main returns to the sweeper


def test_a_missing_sweeper_plugin_names_the_sweep_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper", None)
    with pytest.raises(MissingExtraError, match=r"pippo_lightning\[sweep\]"):
        require_plugins(["hparams_search=optuna_lr_refdrop", "trainer.max_steps=3"])
    require_plugins(["trainer.max_steps=3", "hardware=cpu"])  # nothing to require


@pytest.mark.slow
def test_optuna_sweep_of_two_trials_optimises_the_returned_metric(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "pippo_lightning.cli.train", "hparams_search=optuna_lr_refdrop"]
        + ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"]
        + [f"hydra.sweep.dir={sweep_dir}", f"paths.root_dir={tmp_path}", "logger=none"]
        + ["extras.print_config=false", *TINY_RUN],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"stage.optimizer.lr", "stage.condition_dropout.ref"}
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    psnrs = [json.loads((t / "summary.json").read_text())["metrics"]["val/psnr"] for t in trials]
    assert len(psnrs) == 2
    assert results["best_value"] == pytest.approx(max(psnrs))


def test_pre_commit_runs_ruff_yaml_and_end_of_file_and_make_lint_runs_it():
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hook_ids = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff", "ruff-format", "check-yaml", "end-of-file-fixer"} <= hook_ids
    makefile = (REPO_ROOT / "Makefile").read_text()
    lint_recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "pre-commit run --all-files" in lint_recipe


def test_pre_commit_hooks_catch_a_missing_final_newline(tmp_path: Path):
    pre_commit = Path(sys.executable).parent / "pre-commit"
    if not pre_commit.exists():
        pytest.skip("pre-commit is not installed (the dev extra)")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / ".pre-commit-config.yaml", repo)
    (repo / "bad.yaml").write_text("a: 1")  # no final newline
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PRE_COMMIT_HOME": str(tmp_path / "cache"),
    }
    for command in (["git", "init", "-q"], ["git", "add", "."]):
        subprocess.run(command, cwd=repo, check=True, env=env)
    proc = subprocess.run(
        [str(pre_commit), "run", "--all-files"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0, proc.stdout
    assert (repo / "bad.yaml").read_text() == "a: 1\n"  # fixed by end-of-file-fixer
