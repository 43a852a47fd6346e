"""Weights & Biases specifics: loss-family tags, the run id kept in the run directory (for resuming the
same W&B run), and the media of a validation (per-class table, confusion matrix, prediction overlays).

Nothing here imports ``wandb`` at module level: without a :class:`WandbLogger` nothing W&B is touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

RUN_ID_FILE = "wandb_run_id.txt"

# Loss preset (configs/loss/<name>.yaml) → family, the taxonomy of Ma et al. (2021), "Loss odyssey in
# medical image segmentation". Lovász-Softmax is a convex surrogate of the IoU: region-based.
LOSS_FAMILIES = {
    "distribution-based": ("ce", "wce", "focal", "ohem", "topk", "kl_ls", "mse"),
    "region-based": ("dice", "tversky", "focal_tversky", "lovasz"),
    "compound": ("dice_ce", "log_dice_ce", "dice_focal", "ce_lovasz"),
}


def loss_family(preset: str | None) -> str:
    """The family of a loss preset (``"distribution-based"``, ``"region-based"``, ``"compound"``);
    ``"other"`` for a preset not listed in :data:`LOSS_FAMILIES`."""
    return next((family for family, names in LOSS_FAMILIES.items() if preset in names), "other")


def find_wandb_logger(loggers: Sequence[Logger]) -> WandbLogger | None:
    """The first :class:`WandbLogger` among ``loggers`` (``trainer.loggers``), or None."""
    return next((logger for logger in loggers if isinstance(logger, WandbLogger)), None)


def is_wandb_target(target: str | None) -> bool:
    """Whether a config's ``_target_`` names Lightning's WandbLogger (under any import path)."""
    return bool(target) and str(target).rsplit(".", 1)[-1] == "WandbLogger"


def read_run_id(run_dirs: Sequence[Path]) -> str | None:
    """The W&B run id saved in the first of ``run_dirs`` that holds a :data:`RUN_ID_FILE`, or None."""
    for run_dir in run_dirs:
        path = Path(run_dir) / RUN_ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
    return None


def resume_run_dirs(ckpt_path: str, output_dir: Path) -> list[Path]:
    """Where the run id of a resumed training may lie: the run that wrote ``ckpt_path``
    (``<run>/checkpoints/last.ckpt``), then this run's own directory (``ckpt_path=last`` resumes in place)."""
    ckpt = Path(ckpt_path)
    return [ckpt.parent.parent, ckpt.parent, output_dir] if ckpt.is_file() else [output_dir]


def write_run_id(logger: WandbLogger, output_dir: Path) -> None:
    """Save the id of ``logger``'s run as ``<output_dir>/wandb_run_id.txt`` (call on rank zero only;
    this starts the W&B run if it has not started)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_ID_FILE).write_text(f"{logger.experiment.id}\n")


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


def warn_missing_run_id(ckpt_path: str) -> None:
    """Warn (once, rank zero) that a resumed training found no run id and starts a new W&B run."""
    rank_zero_warn(f"resuming from {ckpt_path}: no {RUN_ID_FILE} found next to it, so W&B starts a new run")
