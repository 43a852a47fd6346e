"""Where two losses disagree: the validation images whose per-image IoU differs most between them, and a picture
of each with both losses' predictions.

**Per-image IoU** of one run on image i: the mean, over the classes c with TP_ic + FP_ic + FN_ic > 0 (present in
the ground truth or the prediction; ignore pixels count nowhere), of TP_ic / (TP_ic + FP_ic + FN_ic), from the
run's ``per_image_val.npz`` (:mod:`segloss.metrics.per_image`, the best epoch). An image without any such class
(all pixels ignored) has none and is never picked.

:func:`select_pairs` averages it over each loss's seeds and ranks the images by |mean of loss A − mean of loss B|;
the runs must list the same validation images in the same order (they are paired by image).

:func:`render_pairs` draws those images: image | ground truth | loss A | loss B, the predictions made now by one run
of each loss from its best checkpoint (``checkpoints/epoch_<best epoch>.ckpt``), in float32, with that run's
inference settings, its configuration replayed safely (:mod:`segloss.report.replay`: a run folder is data, not
code), nothing written into the dataset folder (a missing dataset is an error, not generated); the picture is
:mod:`segloss.report.panels`'.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segloss.comparison.runs import PER_IMAGE, Run
from segloss.errors import ConfigError, SeglossError
from segloss.report.panels import display_rgb, panel, tiles
from segloss.report.replay import replay_config

if TYPE_CHECKING:
    from omegaconf import DictConfig


# ---------------------------------------------------------------------------------------------------- selection


def image_iou(tp, fp, fn) -> np.ndarray:
    """Per-image IoU of ``tp``/``fp``/``fn`` (… × classes): the mean over the classes with TP + FP + FN > 0 of
    TP / (TP + FP + FN); NaN for an image without such a class."""
    tp = np.asarray(tp, dtype=np.float64)
    union = tp + np.asarray(fp, dtype=np.float64) + np.asarray(fn, dtype=np.float64)
    present = union > 0
    ratio = np.divide(tp, union, out=np.zeros_like(union), where=present)
    count = present.sum(axis=-1)
    return np.where(count > 0, ratio.sum(axis=-1) / np.maximum(count, 1), np.nan)


def _runs_of(runs: list[Run], loss: str) -> list[Run]:
    found = [run for run in runs if run.loss == loss]
    if not found:
        raise ConfigError(
            f"no runs of loss {loss!r} among the {len(runs)} runs (their losses: {sorted({r.loss for r in runs})}); "
            "choose one of those"
        )
    return found


def _with_counts(runs: list[Run], loss: str) -> list[Run]:
    of_loss = _runs_of(runs, loss)
    counted = [run for run in of_loss if run.per_image]
    if not counted:
        others = sorted({run.loss for run in runs if run.per_image})
        raise ConfigError(
            f"the {len(of_loss)} run(s) of loss {loss!r} hold no per-image counts ({PER_IMAGE} of the best epoch, "
            "written by segloss.train), so their images cannot be paired with another loss's: train them again "
            f"with this version, or choose losses whose runs have them ({', '.join(others) or 'none here'})"
        )
    return counted


def _per_image_iou(run: Run) -> tuple[list[str], np.ndarray]:
    """``(image names, per-image IoU)`` of a run's stored counts, in their stored order."""
    path = Path(run.per_image)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(name) for name in data["names"].tolist()]
            iou = image_iou(data["tp"], data["fp"], data["fn"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(
            f"cannot read the per-image counts {path}: {str(err).splitlines()[0]}; repair or remove that run"
        ) from None
    if iou.shape != (len(names),):
        raise ConfigError(f"{path} holds {len(names)} image names but counts of shape {iou.shape}; repair that run")
    return names, iou


def _mismatch(reference: Run, names_ref: list[str], run: Run, names: list[str]) -> str:
    if len(names) != len(names_ref):
        detail = f"{len(names)} images against {len(names_ref)}"
    else:
        i = next(i for i, (x, y) in enumerate(zip(names, names_ref, strict=True)) if x != y)
        detail = f"image {i} is {names[i]!r} there and {names_ref[i]!r} here"
    return (
        f"the runs were not scored on the same validation images in the same order, so their images cannot be "
        f"paired: {run.per_image} against {reference.per_image} ({detail}). Compare runs of one data setting "
        "(the same data.root and validation split)"
    )


def select_pairs(runs: list[Run], loss_a: str, loss_b: str, count: int) -> list[dict]:
    """The ``count`` validation images whose per-image IoU (module docstring: the mean over the classes present
    in the ground truth or the prediction) differs most between two losses.

    Per image, delta = (mean over loss_a's seeds) − (mean over loss_b's seeds) of that IoU, from the runs'
    per-image counts (the runs of each loss that have them). Returned by |delta| descending (ties: the earlier
    image first), each ``{"image": name, "index": position in the validation split, "iou_a", "iou_b", "delta",
    "seeds_a", "seeds_b"}`` (seeds: the number of runs averaged).

    Raises:
        ConfigError: a loss without runs, or without per-image counts; runs whose image names or order differ;
            a counts file that cannot be read; the same loss twice.
    """
    if loss_a == loss_b:
        raise ConfigError(f"loss_a and loss_b are both {loss_a!r}; choose two different losses")
    sides = {loss: _with_counts(runs, loss) for loss in (loss_a, loss_b)}
    reference: tuple[Run, list[str]] | None = None
    means = {}
    for loss, chosen in sides.items():
        ious = []
        for run in chosen:
            names, iou = _per_image_iou(run)
            if reference is None:
                reference = (run, names)
            elif names != reference[1]:
                raise ConfigError(_mismatch(reference[0], reference[1], run, names))
            ious.append(iou)
        means[loss] = np.mean(ious, axis=0)
    assert reference is not None
    delta = means[loss_a] - means[loss_b]
    ranked = sorted((i for i in range(len(delta)) if np.isfinite(delta[i])), key=lambda i: (-abs(delta[i]), i))
    return [
        {
            "image": reference[1][i],
            "index": i,
            "iou_a": float(means[loss_a][i]),
            "iou_b": float(means[loss_b][i]),
            "delta": float(delta[i]),
            "seeds_a": len(sides[loss_a]),
            "seeds_b": len(sides[loss_b]),
        }
        for i in ranked[: max(int(count), 0)]
    ]


# ---------------------------------------------------------------------------------------------------- which run


def _checkpoint(run: Run) -> Path | None:
    """The run's best checkpoint where ``segloss.rescore.best_checkpoint`` looks for it (``checkpoints/epoch_<best
    epoch>.ckpt`` in its folder; the best epoch already read), or None when that file is not there."""
    if not run.path:
        return None
    path = Path(run.path) / "checkpoints" / f"epoch_{run.best_epoch:03d}.ckpt"
    return path if path.is_file() else None


def _median_run(candidates: list[tuple[Run, Path]]) -> tuple[Run, Path]:
    """The run whose best mIoU is the (lower) median of ``candidates``' (NaN last, ties by seed)."""
    ordered = sorted(candidates, key=lambda rc: (math.isnan(rc[0].best_miou), rc[0].best_miou, rc[0].seed))
    return ordered[(len(ordered) - 1) // 2]


def choose_runs(
    runs: list[Run], loss_a: str, loss_b: str, seed: int | None = None
) -> tuple[tuple[Run, Path], tuple[Run, Path]]:
    """``((run, checkpoint) of loss_a, (run, checkpoint) of loss_b)``: among each loss's runs whose best
    checkpoint is on disk, the run of ``seed`` when both losses have one, else the run whose best mIoU is the
    median of that loss's (the lower of the two middle ones for an even count; ties by seed).

    Raises:
        ConfigError: a loss without runs, or none of whose runs has its best checkpoint.
    """
    candidates = {}
    for loss in (loss_a, loss_b):
        of_loss = _runs_of(runs, loss)
        found = [(run, ckpt) for run in of_loss if (ckpt := _checkpoint(run)) is not None]
        if not found:
            example = of_loss[0]
            where = f"{example.path}/checkpoints/epoch_{example.best_epoch:03d}.ckpt" if example.path else "(no folder)"
            raise ConfigError(
                f"no run of loss {loss!r} has the checkpoint of its best epoch on disk (e.g. {where}), so its "
                "predictions cannot be drawn. A runs.json read back from a compare folder holds no checkpoints: "
                "give the sweep folder itself, whose runs keep checkpoints/epoch_<best epoch>.ckpt"
            )
        candidates[loss] = found
    if seed is not None:
        given = [next((rc for rc in candidates[loss] if rc[0].seed == seed), None) for loss in (loss_a, loss_b)]
        if given[0] is not None and given[1] is not None:
            return given[0], given[1]
    return _median_run(candidates[loss_a]), _median_run(candidates[loss_b])


def _validation_items(cfg: DictConfig, picks: list[dict], run_dir: Path) -> tuple[object, list[dict], list]:
    """``(eval transform, raw validation items of the picks, palette)`` of a replayed run's data config; the items
    are checked to be the named images."""
    from segloss.utils.config import instantiate
    from segloss.utils.visualize import class_palette

    root = Path(str(cfg.data.root)).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"the validation images of {run_dir} are not on disk: data.root={root} does not exist (its "
            f"configuration names it; DATA_ROOT and PROJECT_ROOT are read now). Put the dataset there, or set "
            f"DATA_ROOT to the folder that holds {root.name}/"
        )
    if int(cfg.data.num_classes) > 256:
        raise ConfigError(f"data.num_classes={cfg.data.num_classes}: at most 256 classes can be drawn")
    try:
        datamodule = instantiate(cfg.data, "data")
        dataset = datamodule.dataset(root=datamodule.root, split=datamodule.splits["val"], transform=None)
        items = []
        for pick in picks:
            index = int(pick["index"])
            if not 0 <= index < len(dataset):
                raise ConfigError(
                    f"image {pick['image']!r} is number {index} of the run's validation split, which holds "
                    f"{len(dataset)} images under {root}: not the data the run was scored on"
                )
            item = dataset[index]
            if str(item["name"]) != str(pick["image"]):
                raise ConfigError(
                    f"validation image {index} under {root} is {item['name']!r}, not {pick['image']!r} as in the "
                    f"per-image counts of {run_dir}: not the data the run was scored on; point DATA_ROOT at it"
                )
            if item["image"].dim() != 3:
                raise ConfigError(f"{item['name']!r} is a volume; only 2D images are drawn")
            items.append(item)
    except ConfigError:
        raise
    except SeglossError as err:  # a dataset missing its layout, an unreadable file: named by the message
        raise ConfigError(f"cannot read the validation images of {run_dir}: {err}") from err
    if datamodule.eval_transform is None:
        raise ConfigError(f"{run_dir}: data.eval_transform is not set; the images are normalised as evaluation does")
    return datamodule.eval_transform, items, class_palette(cfg)


def _predict(cfg: DictConfig, checkpoint: Path, transform, items: list[dict]) -> list[np.ndarray]:
    """Class indices (H×W uint8) of ``items``' images by the run's module with ``checkpoint``'s weights: the run's
    inference settings, float32, no gradients; one module, built once."""
    import torch

    from segloss.build import build_module, without_named_class_weights
    from segloss.models.inference import predict_indices
    from segloss.utils.checkpoints import load_weights

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = build_module(without_named_class_weights(cfg), with_optimizer=False)
    load_weights(module, checkpoint)
    module.to(device).eval()
    return [predict_indices(module, transform, item["image"], device, None) for item in items]


# ---------------------------------------------------------------------------------------------------- pictures


def class_counts(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)`` per class of one image, as :class:`segloss.metrics.per_image.PerImageCounts` counts them
    (pixels whose target or prediction is not a class count nowhere)."""
    c = num_classes
    target, pred = np.asarray(mask, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    valid = (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
    confusion = np.bincount(target[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(confusion)
    return tp, confusion.sum(0) - tp, confusion.sum(1) - tp


def render_pairs(
    runs: list[Run], loss_a: str, loss_b: str, picks: list[dict], out: Path, seed: int | None = None
) -> list[dict]:
    """Draw each pick of :func:`select_pairs` into ``out`` as one PNG: image | ground truth | loss_a's prediction |
    loss_b's prediction, palette colours of the dataset (ignore pixels black), each tile titled (the predictions
    with loss, seed and that run's per-image IoU on that image), tiles at the image's resolution or at most
    :data:`segloss.report.panels.MAX_TILE_HEIGHT` pixels high.

    One run per loss (:func:`choose_runs`: ``seed`` when both have it, else the median-mIoU run), rebuilt from its
    folder's configuration (:func:`segloss.report.replay.replay_config`, checked before anything is built) with its
    best checkpoint; one module per loss, the picks predicted in float32 with the run's inference settings. Returns
    the picks with ``"png"`` (the file), ``"seed_a"``, ``"seed_b"`` and ``"iou_run_a"``, ``"iou_run_b"`` (the drawn
    runs' per-image IoU) added.

    Raises:
        ConfigError: why nothing can be drawn — no checkpoint on disk, a refused or unreadable configuration, the
            dataset missing or not the one the runs were scored on.
    """
    from segloss.utils.visualize import palette_lut

    if not picks:
        return []
    chosen = choose_runs(runs, loss_a, loss_b, seed)
    replayed = [replay_config(Path(run.path)) for run, _ in chosen]  # both refused or accepted before any build
    data = [_validation_items(cfg, picks, Path(run.path)) for cfg, (run, _) in zip(replayed, chosen, strict=True)]
    preds = [
        _predict(cfg, ckpt, transform, items)
        for cfg, (_, ckpt), (transform, items, _) in zip(replayed, chosen, data, strict=True)
    ]
    _, items, palette = data[0]
    lut, num_classes = palette_lut(palette), int(replayed[0].data.num_classes)
    (run_a, _), (run_b, _) = chosen
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = []
    for rank, (pick, item, pred_a, pred_b) in enumerate(zip(picks, items, preds[0], preds[1], strict=True)):
        mask = item["mask"].numpy() if hasattr(item["mask"], "numpy") else np.asarray(item["mask"])
        ious = [float(image_iou(*class_counts(pred, mask, num_classes))) for pred in (pred_a, pred_b)]
        delta = f"seed-mean IoU diff. {pick['delta']:+.3f}" if "delta" in pick else ""
        titles = [
            ("image", str(pick["image"])),
            ("ground truth", delta),
            (f"{loss_a} (seed {run_a.seed})", f"IoU {ious[0]:.3f}"),
            (f"{loss_b} (seed {run_b.seed})", f"IoU {ious[1]:.3f}"),
        ]
        path = out / f"{rank:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', str(pick['image']))[:80]}.png"
        panel(tiles(display_rgb(item["image"]), mask, [pred_a, pred_b], lut), titles).save(path)
        drawn.append({**pick, "png": path, "seed_a": run_a.seed, "seed_b": run_b.seed,
                      "iou_run_a": ious[0], "iou_run_b": ious[1]})  # fmt: skip
    return drawn
