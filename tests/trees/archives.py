"""Tiny dataset archives in each publisher's real format, built from the trees of this package: the VOC
trainval tar (``VOCdevkit/VOC2012/…``), SBD's ``benchmark.tgz`` (``benchmark_RELEASE/dataset/cls/<id>.mat``
MATLAB structs ``GTcls`` with ``Segmentation``), an MSD task tar, the Kvasir-SEG zip (``Kvasir-SEG/{images,
masks}``) and the two Cityscapes zips (``gtFine/…``, ``leftImg8bit/…`` at their top level)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
from scipy.io import savemat

from tests.conftest import write_cityscapes_tree
from tests.trees.folders import write_folder_tree
from tests.trees.msd import write_msd_task
from tests.trees.voc import write_voc_tree


def _tar(path: Path, src: Path, folder: str, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        tf.add(src / folder, arcname=folder)
    return path


def _zip(path: Path, src: Path, folders: list[str], extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            for file in sorted((src / folder).rglob("*")):
                zf.write(file, file.relative_to(src).as_posix())
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
    return path


def voc_tar(path: Path, work: Path, ids: dict[str, list[str]], extra_jpegs: list[str]) -> dict:
    """``VOCtrainval_11-May-2012.tar``-style tar; ``extra_jpegs`` are ids with a JPEG only (SBD images)."""
    written = write_voc_tree(work, ids, with_aug=extra_jpegs)
    for folder in ("SegmentationClassAug",):  # the VOC tar has no SBD masks: keep only the JPEGs
        for png in (work / "VOCdevkit" / "VOC2012" / folder).glob("*.png"):
            png.unlink()
        (work / "VOCdevkit" / "VOC2012" / folder).rmdir()
    _tar(path, work, "VOCdevkit")
    return written


def sbd_tgz(path: Path, work: Path, ids: list[str], size=(12, 16), seed: int = 1) -> dict[str, np.ndarray]:
    """SBD ``benchmark.tgz``: ``benchmark_RELEASE/dataset/{cls/<id>.mat, train.txt, val.txt}``."""
    rng = np.random.default_rng(seed)
    dataset = work / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    labels = {}
    for image_id in ids:
        seg = rng.integers(0, 21, size, dtype=np.uint8)
        gt = {"Segmentation": seg, "Boundaries": np.zeros((21, 1), dtype=object), "CategoriesPresent": np.unique(seg)}
        savemat(dataset / "cls" / f"{image_id}.mat", {"GTcls": gt})
        labels[image_id] = seg
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in ids[:-1]))
    (dataset / "val.txt").write_text(f"{ids[-1]}\n")
    _tar(path, work, "benchmark_RELEASE", "w:gz")
    return labels


def msd_tar(path: Path, work: Path, task: str = "Task09_Spleen", cases: int = 3) -> dict:
    written = write_msd_task(work / task, cases=cases, labels=("background", "spleen"))
    _tar(path, work, task)
    return written


def kvasir_zip(path: Path, work: Path, stems: list[str]) -> dict:
    written = write_folder_tree(work / "Kvasir-SEG", stems)
    _zip(path, work, ["Kvasir-SEG"])
    return written


def cityscapes_zips(folder: Path, work: Path) -> dict:
    """``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip`` in ``folder``; returns the labelIds."""
    labels = write_cityscapes_tree(work, {"train": {"aachen": 2}, "val": {"lindau": 1}})
    _zip(folder / "gtFine_trainvaltest.zip", work, ["gtFine"], {"README": "gtFine", "license.txt": "terms"})
    _zip(folder / "leftImg8bit_trainvaltest.zip", work, ["leftImg8bit"], {"README": "left", "license.txt": "terms"})
    return labels
