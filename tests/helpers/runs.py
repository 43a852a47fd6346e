"""Sweep folders as `make sweep` writes them (configs, metrics.csv, per-image counts), for `make compare` and
`make rescore` tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import yaml

CLASSES = ["road", "car", "wall"]  # wall never occurs in these runs' validation split


def write_run(
    sweep: Path, num: int, loss: str, seed: int, curve: list[float], ious: dict[str, float], scores: dict | None = None,
    completed: bool = True, config: dict | None = None, planned: int | None = None,
) -> Path:  # fmt: skip
    """A job directory as `make sweep` writes it: config.yaml, .hydra/hydra.yaml, csv/metrics.csv (one train row
    and one val row per epoch, like Lightning's CSVLogger; the best epoch gets ``ious``) and, for a run that
    finished, COMPLETED."""
    run = sweep / f"{num}_{loss}-unet-synthetic_city-s{seed}"
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    settings = {"seed": seed, "run_name": f"{loss}-unet-synthetic_city-s{seed}",
                "trainer": {"max_epochs": planned or len(curve)}, **(config or {})}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    choices = {"loss": loss, "model": "unet", "data": "synthetic_city"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    header = [
        "epoch",
        "step",
        "train/loss_epoch",
        "val/mIoU",
        *(f"val/IoU/{c}" for c in CLASSES),
        "val/mBIoU",
        "val/ECE",
    ]
    best = max(range(len(curve)), key=curve.__getitem__)
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for epoch, miou in enumerate(curve):
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "train/loss_epoch": 1.0 / (epoch + 1)})
            per_class = ious if epoch == best else {"road": 0.1, "car": 0.1}
            extra = {f"val/{k}": v for k, v in (scores or {}).items()} if epoch == best else {}
            writer.writerow({"epoch": epoch, "step": 10 * epoch, "val/mIoU": miou, "val/IoU/wall": ""}
                            | {f"val/IoU/{c}": v for c, v in per_class.items()} | extra)  # fmt: skip
    if completed:
        (run / "COMPLETED").write_text(json.dumps({"finished": f"2026-01-01T00:00:{num:02d}", "epochs": len(curve)}))
    return run


def write_counts(
    run: Path, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, classes=("road", "car"), names=None
) -> None:
    """The per_image_val.npz a training writes for its best epoch (segloss.metrics.per_image.save_per_image)."""
    from segloss.metrics.per_image import save_per_image

    names = names or [f"img{i:03d}" for i in range(len(tp))]
    counts = {"index": torch.arange(len(tp)), "names": names, **{k: torch.from_numpy(v) for k, v in
              (("tp", tp), ("fp", fp), ("fn", fn))}}  # fmt: skip
    save_per_image(run / "per_image_val.npz", counts, list(classes), "val/mIoU", None)
