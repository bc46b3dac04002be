"""Packaging (issue #17.5): a small core plus extras, every import declared, py.typed shipped,
and a missing optional package reported as one line naming the extra to install."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from pippo_lightning.extras import OPTIONAL_MODULES, MissingExtraError, require

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src" / "pippo_lightning"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

#: Imported but deliberately not declared, with the reason.
UNDECLARED_ON_PURPOSE = {
    # LPIPS's backbone; must match the installed torch build, so the user picks it
    # (metrics/image.py checks for it and reports LPIPS as unavailable without it)
    "torchvision",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared(extras: list[str] | None = None) -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extras is None or extra in extras:
            names |= {_name(r) for r in requirements}
    return names


def _imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {
        m
        for m in modules
        if m not in sys.stdlib_module_names and m not in ("pippo_lightning", "__main__")
    }


def test_every_imported_package_is_declared_in_pyproject():
    distributions = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in sorted(_imported_top_level_modules() - UNDECLARED_ON_PURPOSE):
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported in src/ but not declared in pyproject.toml: {undeclared}"


def test_core_is_small_and_each_optional_module_has_its_extra():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for heavy in ("wandb", "huggingface-hub", "transformers", "kornia", "tensorboard", "scipy"):
        assert heavy not in core, f"{heavy} belongs to an extra, not the core"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, (distribution, extra) in OPTIONAL_MODULES.items():
        assert extra in extras, f"{module}: extra [{extra}] is not in pyproject.toml"
        assert _name(distribution) in {_name(r) for r in extras[extra]}, (module, extra)
    # [all] pulls in every other extra but dev
    (all_spec,) = extras["all"]
    bundled = set(re.search(r"\[(.*)\]", all_spec).group(1).split(","))
    assert bundled == set(extras) - {"all", "dev"}


def test_make_install_installs_every_extra():
    script = (REPO_ROOT / "scripts" / "install.sh").read_text()
    assert '-e ".[all,dev]"' in script


def test_py_typed_marker_is_in_the_package_and_declared_as_package_data():
    assert (SRC / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["pippo_lightning"]


@pytest.mark.slow
def test_built_wheel_ships_py_typed(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pippo_lightning-*.whl")
    assert "pippo_lightning/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path):
    from pippo_lightning.callbacks.loggers import tensorboard_logger, wandb_logger

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(
        MissingExtraError, match=r"logger=wandb needs wandb.*pippo_lightning\[wandb\]"
    ):
        wandb_logger(save_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"pippo_lightning\[tensorboard\]"):
        tensorboard_logger(save_dir=tmp_path)


def test_missing_extra_is_one_error_line_from_a_cli(monkeypatch, capsys):
    from pippo_lightning.cli.common import guarded

    monkeypatch.setitem(sys.modules, "kornia", None)

    @guarded
    def task(cfg):
        require("kornia", "the LightGlue matcher")

    with pytest.raises(SystemExit) as exit_info:
        task(None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "the LightGlue matcher needs kornia" in err and "pippo_lightning[metrics]" in err


def test_an_import_error_inside_an_installed_package_is_not_called_a_missing_extra(monkeypatch):
    # kornia is installed but one of its own dependencies is broken: that is a real error
    monkeypatch.setitem(sys.modules, "kornia", None)
    monkeypatch.setitem(
        sys.modules, "kornia.feature", None
    )  # also when an earlier test imported it
    monkeypatch.setitem(OPTIONAL_MODULES, "kornia.feature", ("kornia", "metrics"))
    with pytest.raises(MissingExtraError):  # kornia itself missing: the extra is named
        require("kornia.feature", "x")

    def broken_import(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'kornia_rs'", name="kornia_rs")

    monkeypatch.delitem(sys.modules, "kornia")
    monkeypatch.setattr("importlib.import_module", broken_import)
    with pytest.raises(ModuleNotFoundError) as caught:
        require("kornia", "x")
    assert not isinstance(caught.value, MissingExtraError)
