"""Shared fixtures: Hydra composition and tiny datasets written in the official on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from segloss.utils.config import CONFIG_DIR, set_environment

set_environment()
# Under pytest-xdist (make test) every core runs a worker: one torch thread each, and the same for the
# processes the tests start (they inherit OMP_NUM_THREADS), so that the workers share the cores.
# In-process and subprocess trainings use the same thread count, so their results can be compared bit for bit.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

# A small synthetic_city that trains in seconds (the same generator as the default, fewer/smaller images).
TINY_SYNTHETIC = [
    "data.generator.num_train=96",
    "data.generator.num_val=12",
    "data.generator.height=64",
    "data.generator.width=128",
    "data.train_transform.base_size=[64,128]",
    "data.train_transform.crop_size=[64,128]",
    "data.num_workers=0",
    "data.batch_size=8",
    "model.net.base_channels=8",
    "model.net.depth=3",
    "optimizer.lr=0.002",
    "trainer.check_val_every_n_epoch=1",
]


# The configs with a Trainer. A test that compares numbers must not inherit `trainer.precision=auto` (bf16 on
# a CPU with native bfloat16, float32 elsewhere): every training, evaluation and prediction of the suite runs
# in float32 unless its test names a precision itself (the precision tests do).
WITH_TRAINER = ("train", "eval", "predict")


def pinned_precision(config_name: str, overrides: list[str]) -> list[str]:
    """``overrides`` with ``trainer.precision=32-true`` added where the test named none."""
    named = any(o.lstrip("+~").startswith("trainer.precision=") for o in overrides)
    return overrides if config_name not in WITH_TRAINER or named else [*overrides, "trainer.precision=32-true"]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose like `python -m segloss.<entry>` would, with the hydra node available for interpolations (and
    float32 unless the test names a precision: :func:`pinned_precision`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=pinned_precision(config_name, overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.print_config = False
        del cfg.hydra
    return cfg


def fit(overrides: list[str], output_dir: Path) -> dict:
    """``segloss.train.train`` in this process (no interpreter start-up) on ``overrides``, writing ``output_dir``."""
    from segloss.train import train

    return train(compose_config("train", list(overrides), Path(output_dir)))


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(overrides, name="train")`` → composed config writing under tmp_path."""
    counter = iter(range(1000))

    def _make(overrides: list[str] | None = None, name: str = "train") -> DictConfig:
        return compose_config(name, list(overrides or []), tmp_path / f"run{next(counter)}")

    return _make


def write_cityscapes_tree(root: Path, layout: dict[str, dict[str, int]], size=(8, 16), seed: int = 0) -> dict:
    """Write ``{split: {city: n_images}}`` in the official Cityscapes layout with random labelIds
    drawn from every id 0–33 (so ignored ids appear too). Returns ``{name: labelIds array}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, cities in layout.items():
        for city, count in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                label_ids = rng.integers(0, 34, size, dtype=np.uint8)
                Image.fromarray(rgb).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                Image.fromarray(label_ids).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
                written[stem] = label_ids
    return written


@pytest.fixture
def cityscapes_tree(tmp_path):
    root = tmp_path / "cityscapes"
    labels = write_cityscapes_tree(root, {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 2, "lindau": 1}})
    return root, labels


# The tiny training of TINY_SYNTHETIC as a quiet command line run (CSV logs only).
QUIET_RUN = [
    "logger=csv", "print_config=false", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
]  # fmt: skip


def run_cli(module: str, overrides: list[str], timeout: int = 300, check: bool = True):
    """``python -m segloss.<module> overrides…`` in a subprocess (the tests package importable)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    # a fresh command: no rendezvous of a process group that an earlier test of this worker may have left behind
    stale = ("SEGLOSS_TRACEBACK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
    env = {k: v for k, v in os.environ.items() if k not in stale}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    overrides = pinned_precision(module, overrides)
    proc = subprocess.run(
        [sys.executable, "-m", f"segloss.{module}", *overrides],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"segloss.{module} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server():
    """A file server on 127.0.0.1 for the download tests (:class:`tests.http_server.FileServer`)."""
    from tests.http_server import FileServer

    srv = FileServer()
    yield srv
    srv.shutdown()
    srv.server_close()
