"""Pictures of images, masks and predictions: palettes, image | truth | prediction grids (PIL), palette
PNGs, and the W&B media of a validation (per-class table, confusion-matrix heatmap, mask overlays).

``wandb`` and matplotlib are imported only by the functions that make W&B media.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def class_palette(cfg) -> list[tuple[int, int, int]]:
    """The colours of a run's classes: its dataset class's ``PALETTE`` (``data.dataset._target_``) when that has one
    per class (``data.num_classes``), else :func:`default_palette` — what ``make predict`` paints with."""
    import hydra
    from omegaconf import OmegaConf

    num_classes = int(cfg.data.num_classes)
    target = OmegaConf.select(cfg, "data.dataset._target_")
    palette = None
    if target:
        try:
            palette = getattr(hydra.utils.get_class(target), "PALETTE", None)
        except (ImportError, ValueError):
            palette = None
    if palette is None or len(palette) < num_classes:
        palette = default_palette(num_classes)
    return [tuple(int(v) for v in colour) for colour in palette]


def palette_lut(palette: Sequence[Sequence[int]], ignore_color=(0, 0, 0)) -> np.ndarray:
    """A 256×3 uint8 table: class c → palette[c]; every other value (ignore) → ``ignore_color``."""
    lut = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut


def default_palette(num_classes: int, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(num_classes)]


def display_image(image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """An image as the data pipeline delivered it, back to uint8 H×W×3 for display: a uint8 3×H×W image
    (``data.normalize_on_device``) as it is; a float one normalised as ``(x/255 − mean) / std`` is undone
    with the same ``mean`` and ``std`` — those of the data config, not ImageNet's whatever the dataset."""
    if image.dtype == torch.uint8:
        return image.detach().cpu().permute(1, 2, 0).numpy()
    if mean is None or std is None:
        raise ValueError("a normalised float image needs the mean and std it was normalised with")
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    rgb = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).numpy()


def fit_within(sample: tuple, max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image H×W×3, mask, prediction)`` scaled down so that the long side is at most ``max_side``
    (bilinear for the image, nearest for the label maps); unchanged when already small enough."""
    image, mask, pred = sample[:3]
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, mask, pred
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (W, H)
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    labels = [
        np.asarray(Image.fromarray(np.asarray(x, dtype=np.int32)).resize(size, Image.NEAREST)) for x in (mask, pred)
    ]
    return small, labels[0], labels[1]


def prediction_grid(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], preds: Sequence[np.ndarray], lut: np.ndarray
) -> Image.Image:
    """One row per example: image | ground truth | prediction, separated by 2 px white lines."""
    rows = []
    for image, mask, pred in zip(images, masks, preds):
        sep = np.full((image.shape[0], 2, 3), 255, dtype=np.uint8)
        gt, pr = lut[np.clip(mask, 0, 255).astype(np.uint8)], lut[pred.astype(np.uint8)]
        rows.append(np.concatenate([image, sep, gt, sep, pr], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def save_palette_png(indices: np.ndarray, palette: Sequence[Sequence[int]], path) -> None:
    """Write class indices (H×W) as a palette ("P" mode) PNG: the file holds the indices, viewers
    show the palette colours (the VOC convention)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(indices, dtype=np.uint8))  # "L"; putpalette makes it "P"
    flat = [int(v) for colour in palette for v in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    image.save(path)


def class_table(class_names: Sequence[str], iou, dice, confmat=None):
    """A ``wandb.Table`` (class, IoU, Dice, pixels): one row per class; pixels = the class's
    ground-truth pixel count in the split (row sums of ``confmat``); IoU/Dice are None where undefined."""
    import wandb

    pixels = confmat.sum(1).tolist() if confmat is not None else [None] * len(class_names)

    def value(v: float) -> float | None:
        return None if v != v else float(v)

    rows = [[n, value(i), value(d), p] for n, i, d, p in zip(class_names, iou.tolist(), dice.tolist(), pixels)]
    return wandb.Table(columns=["class", "IoU", "Dice", "pixels"], data=rows)


def confusion_matrix_image(confmat, class_names: Sequence[str], title: str = "val confusion matrix"):
    """The row-normalised confusion matrix (rows: ground truth, columns: prediction; a class absent
    from the ground truth has an empty row) as a ``wandb.Image`` of a labelled heatmap."""
    import wandb
    from matplotlib.figure import Figure

    counts = np.asarray(confmat, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 2.5 + 0.35 * len(class_names)
    fig = Figure(figsize=(size + 1.0, size), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(normalised, cmap="viridis", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return wandb.Image(Image.open(buffer).convert("RGB"), caption="rows normalised to 1 (recall per class)")


def overlay_image(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, class_names, ignore_index: int, caption=""):
    """A ``wandb.Image`` of ``image`` (H×W×3 uint8) with the ``ground_truth`` and ``prediction`` masks;
    ignore pixels of the ground truth get the extra value ``len(class_names)`` labelled ``"ignore"``."""
    import wandb

    num_classes = len(class_names)
    if num_classes > 255:
        raise ValueError("W&B masks hold values 0–255: at most 255 classes (one value is kept for ignore)")
    labels = dict(enumerate(class_names))
    truth = np.where(mask == ignore_index, num_classes, mask).astype(np.uint8)
    masks = {
        "ground_truth": {"mask_data": truth, "class_labels": {**labels, num_classes: "ignore"}},
        "prediction": {"mask_data": np.asarray(pred, dtype=np.uint8), "class_labels": labels},
    }
    return wandb.Image(image, masks=masks, caption=caption)
