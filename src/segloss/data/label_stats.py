"""One pass over a split's labels: pixel counts per class, cached outside the dataset folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from segloss.errors import DatasetFormatError


def _mask(dataset: Dataset, index: int) -> torch.Tensor:
    load = getattr(dataset, "load_mask", None)
    return load(index) if load is not None else dataset[index]["mask"]


def label_counts(dataset: Dataset, num_classes: int, ignore_index: int = 255) -> dict:
    """One pass over the dataset's untransformed masks (ignored pixels count nowhere):

    * ``counts``: pixels n_c of each class;
    * ``image_pixels``: non-ignored pixels of the images that contain c (median-frequency weights);
    * ``images``: how many images contain c (image frequency = images / num_images);
    * ``num_images``, ``ignored`` (ignored pixels) and ``pixels`` (all pixels).
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    images = torch.zeros(num_classes, dtype=torch.float64)
    ignored = pixels = 0
    for index in range(len(dataset)):
        mask = _mask(dataset, index)
        valid = mask[mask != ignore_index]
        per_class = torch.bincount(valid.flatten(), minlength=num_classes)[:num_classes].double()
        counts += per_class
        image_pixels += (per_class > 0).double() * valid.numel()
        images += (per_class > 0).double()
        ignored += mask.numel() - valid.numel()
        pixels += mask.numel()
    return {
        "counts": counts.tolist(),
        "image_pixels": image_pixels.tolist(),
        "images": images.tolist(),
        "num_images": len(dataset),
        "ignored": ignored,
        "pixels": pixels,
    }


def label_fingerprint(dataset: Dataset) -> str:
    """A hash of the dataset's label files — path, size and modification time of each (``label_paths``) — so
    that masks corrected in place give a new cache entry; the sample count for datasets without files."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    for path in getattr(dataset, "label_paths", None) or []:
        try:
            info = os.stat(path)
            digest.update(f"{path}|{info.st_size}|{info.st_mtime_ns}\n".encode())
        except OSError:  # unreadable: counted as such; reading it will name it
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


def cached_label_counts(dataset: Dataset, num_classes: int, ignore_index: int, cache_dir: str | Path, key: str) -> dict:
    """:func:`label_counts`, cached as JSON in ``cache_dir`` under a hash of ``key`` and the label files'
    fingerprint (:func:`label_fingerprint`: any label file added, removed, rewritten or touched gives a new
    entry; ``make stats ARGS="refresh=true"`` empties the cache). Never writes next to the data."""
    fingerprint = label_fingerprint(dataset)
    digest = hashlib.sha256(f"v3|{key}|{fingerprint}|{num_classes}|{ignore_index}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "label_counts" / f"{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    stats = label_counts(dataset, num_classes, ignore_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks may race
    tmp.write_text(json.dumps({"key": key, **stats}))
    tmp.replace(path)
    return stats


def require_labelled(stats: dict, where: str, ignore_index: int) -> dict:
    """``stats`` when some pixel is labelled; else :class:`DatasetFormatError` naming ``where``."""
    if not sum(stats["counts"]):
        raise DatasetFormatError(
            f"every pixel of {where} ({stats['num_images']} images, {stats['pixels']:,} pixels) is ignore_index="
            f"{ignore_index} or outside the classes: there is nothing to count class weights from. Check the "
            "label files (a wrong mapping, e.g. colour masks) and data.ignore_index"
        )
    return stats
