"""Installed like a library: the wheel holds one namespace, `mow`, with the configs as package data, and the CLI
finds shipped configs from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mow.cli.main import main
from mow.workbench.config import read_yaml_mapping, resolve_config_path, shipped_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip install .` would install, built from a copy (an in-tree build leaves build/ in the checkout)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "__pycache__", "*.egg-info",
                                                                ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(out), str(source)], check=True)
    (path,) = out.glob("model_organism_workbench-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_one_namespace(wheel: zipfile.ZipFile):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"mow"}
    packages = {name.split("/")[1] for name in wheel.namelist() if name.startswith("mow/")}
    assert packages == {"cli", "configs", "data", "diffing", "elicitation", "finetune", "organisms", "workbench"}
    assert "mow/__init__.py" not in wheel.namelist()  # a namespace package, as the checkout lays it out


def test_wheel_ships_configs_and_assets(wheel: zipfile.ZipFile):
    names = set(wheel.namelist())
    shipped = {f"mow/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assets = {f"mow/data/assets/{p.relative_to(REPO / 'data' / 'assets')}"
              for p in (REPO / "data" / "assets").rglob("*") if p.is_file()}
    assert shipped and shipped <= names
    assert assets and assets <= names
    entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "mow = mow.cli.main:main" in entry_points


def test_shipped_configs_resolve_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(Path("configs/organisms/taboo.yaml")) == shipped_config("organisms/taboo.yaml")
    assert read_yaml_mapping(Path("configs/organisms/taboo.yaml"))["kind"] == "taboo"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "diff.yaml").write_text("seed: 7\n")
    assert read_yaml_mapping(Path("configs/diff.yaml")) == {"seed": 7}  # a file where the user stands wins


def test_a_missing_config_names_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(tmp_path)
    assert main(["organism", "build", "configs/organisms/no-such-kind.yaml"]) == 2
    assert "configs/organisms/no-such-kind.yaml: config file not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
