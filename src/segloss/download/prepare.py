"""What the loaders need beyond unpacking, and the loaders' own check of the result.

Only SBD is converted: its class labels ``benchmark_RELEASE/dataset/cls/<id>.mat`` (a MATLAB struct
``GTcls`` whose field ``Segmentation`` is the H×W class-index image, 0 background, 1–20 the VOC classes)
become single-channel index PNGs ``VOC2012/SegmentationClassAug/<id>.png``, the DeepLab/MMSegmentation
layout that :class:`segloss.data.voc.VOCDataset` reads for ``trainaug``. Nothing else is converted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from segloss.errors import DownloadError, SeglossError

SBD_CLS = Path("benchmark_RELEASE") / "dataset" / "cls"


def sbd_to_png(unpacked: Path, out: Path) -> int:
    """Write every ``<unpacked>/benchmark_RELEASE/dataset/cls/<id>.mat`` as ``<out>/<id>.png``; returns the count."""
    from scipy.io import loadmat

    cls_dir = unpacked / SBD_CLS
    mats = sorted(cls_dir.glob("*.mat")) if cls_dir.is_dir() else []
    if not mats:
        raise DownloadError(
            f"the SBD archive holds no {SBD_CLS}/*.mat label files; nothing was written. The file is not SBD's "
            "benchmark.tgz: check download.base_url"
        )
    out.mkdir(parents=True, exist_ok=True)
    for mat in mats:
        try:
            labels = loadmat(str(mat), squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        except (KeyError, AttributeError, ValueError, OSError) as err:
            raise DownloadError(
                f"{mat.name} of the SBD archive is not an SBD label file (no GTcls.Segmentation: {err}); nothing was "
                "written. Download benchmark.tgz again from the official source"
            ) from err
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.max(initial=0) > 20:
            raise DownloadError(f"{mat.name}: SBD labels must be an H×W array of classes 0–20, got {labels.shape}")
        Image.fromarray(labels.astype(np.uint8)).save(out / f"{mat.stem}.png")
    return len(mats)


PREPARE = {"sbd_to_png": sbd_to_png}


def layout_check(check: DictConfig, data_dir: Path) -> list[str]:
    """Build the dataset class named by ``check.dataset`` (a partial ``_target_`` node, as in
    ``configs/data/*.yaml``) on ``data_dir/check.root`` for each of ``check.splits`` and read one item;
    returns one line per split. A failure raises the loader's own error, wrapped to say what to do."""
    from hydra.utils import instantiate

    root = data_dir / check.root
    lines = []
    for split in check.splits:
        try:
            dataset = instantiate(OmegaConf.to_container(check.dataset, resolve=True))(root=root, split=split)
            item = dataset[0]
        except SeglossError as err:
            raise DownloadError(
                f"the unpacked data at {root} does not pass the loader's check for split '{split}': {err}"
            ) from err
        lines.append(f"{split}: {len(dataset)} samples, e.g. {item['name']} {tuple(item['image'].shape)}")
    return lines
