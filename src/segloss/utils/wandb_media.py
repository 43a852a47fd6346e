"""Weights & Biases specifics: loss-family tags, the run id kept in the run directory (for resuming the
same W&B run), and the media of a validation (per-class table, confusion matrix, prediction overlays).

Nothing here imports ``wandb`` at module level: without a :class:`WandbLogger` nothing W&B is touched.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, open_dict
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


def resume_wandb_run(cfg: DictConfig, output_dir: Path) -> None:
    """With ``ckpt_path`` set, point the WandbLogger config at the W&B run of the checkpoint's run
    directory (its ``wandb_run_id.txt``): ``id=<that id>, resume=allow`` — the resumed training logs to
    the same W&B run. An ``id`` given in the logger config wins."""
    entries = [c for c in (cfg.get("logger") or {}).values() if isinstance(c, DictConfig)]
    entries = [c for c in entries if is_wandb_target(c.get("_target_"))]
    if not cfg.get("ckpt_path") or not entries:
        return
    run_id = read_run_id(resume_run_dirs(str(cfg.ckpt_path), output_dir))
    if run_id is None:
        warn_missing_run_id(str(cfg.ckpt_path))
        return
    with open_dict(cfg):
        for entry in entries:
            entry.id = entry.get("id") or run_id
            entry.resume = "allow"


@rank_zero_only
def save_wandb_run_id(loggers: list, output_dir: Path) -> None:
    """``<run dir>/wandb_run_id.txt``: the W&B run id, read back by :func:`resume_wandb_run`."""
    logger = find_wandb_logger(loggers)
    if logger is not None:
        write_run_id(logger, output_dir)


def finish_wandb() -> None:
    """Close the W&B run (Lightning leaves it open), so a later run in this process gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def start_loggers(loggers: list, hyperparams: dict) -> list:
    """Log the (redacted) hyperparameters; a W&B logger that cannot start — no network in online mode,
    no API key, an unwritable wandb folder — is dropped with a warning and the training goes on with
    the others (the CSV metrics stay complete)."""
    kept = []
    for logger in loggers:
        try:
            logger.log_hyperparams(hyperparams)
        except Exception as err:  # W&B raises many kinds (UsageError, CommError, OSError, …)
            if not isinstance(logger, WandbLogger):
                raise
            warnings.warn(
                f"W&B could not start ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "training goes on without it — the CSV logger keeps every metric. For offline runs set "
                "WANDB_MODE=offline, or log in with `wandb login`",
                stacklevel=2,
            )
            finish_wandb()
            continue
        kept.append(logger)
    return kept
