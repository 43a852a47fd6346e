"""segloss as a package: a non-editable wheel, installed into a fresh venv, works from an empty directory.

The venv reuses this environment's installed dependencies (a path to them in a .pth file: no network, no
editable finder, which only the original venv's own site-packages processing would load), so what is tested
is the wheel's own content: modules, configs, console scripts, metadata.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTHETIC

ROOT = Path(__file__).resolve().parents[1]
EVAL = [*TINY_SYNTHETIC, "trainer.precision=32-true"]
TINY = [*EVAL, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "logger=csv"]
USER_EXPERIMENT = """# @package _global_
defaults:
  - override /loss: dice_ce
tags: [from_my_configs]
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):  # a copy: the build writes build/ and egg-info
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "configs", source / "configs")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (found,) = out.glob("segloss-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """``(bin folder, environment)`` of a fresh venv with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    drop = ("PYTHONPATH", "PROJECT_ROOT", "SEGLOSS_CONFIG_DIR", "DATA_ROOT", "SEGLOSS_WEIGHTS", "SEGLOSS_TRACEBACK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # the same environment for pip: with PYTHONPATH=src it would see src/segloss.egg-info and install no scripts
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True, env=env, timeout=300)  # fmt: skip
    return venv / "bin", env


def test_the_wheel_holds_every_module_and_config_and_no_local_settings(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"segloss/{p.relative_to(ROOT / 'src' / 'segloss')}" for p in (ROOT / "src" / "segloss").rglob("*.py")}
    configs = {f"segloss/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")
               if p.relative_to(ROOT / "configs") != Path("local/default.yaml")}  # fmt: skip
    assert modules <= names and configs <= names and "segloss/py.typed" in names
    assert "segloss/configs/local/default.yaml" not in names  # a user's machine settings never ship
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    commands = ("train", "eval", "predict", "export", "stats", "compare", "report", "rescore", "download", "search",
                "synthetic", "cityscapes-eval")  # fmt: skip
    for command in commands:
        assert f"segloss-{command} = " in scripts


def test_an_installed_wheel_trains_evaluates_predicts_and_compares_from_an_empty_folder(installed, tmp_path):
    bin_dir, env = installed
    work = tmp_path / "empty"
    work.mkdir()

    def run(command: str, *args: str) -> str:
        proc = subprocess.run([str(bin_dir / command), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stdout

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run("segloss", "--version").strip() == f"segloss {version}"

    mine = work / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(USER_EXPERIMENT)
    run("segloss-train", "--multirun", "--config-dir", str(work / "my_configs"), "experiment=mine", "seed=0,1", *TINY)
    (sweep,) = (work / "logs" / "train" / "multiruns").iterdir()
    first = next(sweep.glob("0_*"))
    config = (first / "config.yaml").read_text()
    assert "from_my_configs" in config and "_target_: segloss.losses.CompoundLoss" in config  # the user's experiment
    assert (work / "data" / "synthetic_city").is_dir()  # made on first use under the current folder
    ckpt = next((first / "checkpoints").glob("epoch*.ckpt"))

    said = run("segloss-eval", f"ckpt_path={ckpt}", *EVAL)
    assert "mIoU" in said
    images = work / "data" / "synthetic_city" / "leftImg8bit" / "val"
    run("segloss-predict", f"ckpt_path={ckpt}", f"input_dir={images}", f"output_dir={work / 'labels'}", *TINY_SYNTHETIC)
    assert len(list((work / "labels").rglob("*.png"))) == len(list(images.rglob("*.png"))) == 12
    run("segloss-compare", str(sweep))
    assert "dice_ce" in (sweep / "compare" / "compare.md").read_text()
