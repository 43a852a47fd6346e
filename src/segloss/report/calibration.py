"""Reliability-diagram data: the confidence bins that each run stored per image, pooled per loss.

A training with ``metrics.calibration`` on stores, per validation image i and confidence bin b (15 equal-width
bins of the softmax's top probability, :class:`segloss.metrics.quality.Calibration`), the pixel count n_ib, the
correctly labelled pixels k_ib and the summed confidence s_ib (``calib_count``, ``calib_correct``,
``calib_confidence`` in ``per_image_val.npz``). Pooled over the images and seeds of one loss:

    accuracy_b = Σ k_ib / Σ n_ib      confidence_b = Σ s_ib / Σ n_ib      share_b = Σ n_ib / Σ n

and the pooled ECE = Σ_b |Σ k_ib − Σ s_ib| / Σ n (the ECE of all those pixels as one set). The table's ECE is
the mean over seeds of each run's own ECE; the two differ a little because pooling weighs runs by their pixels
and lets the bins' errors of different runs cancel.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloss.comparison.runs import Run
from segloss.errors import ConfigError

FIELDS = ("calib_count", "calib_correct", "calib_confidence")


@dataclass
class Pooled:
    """One loss's calibration bins summed over its runs' images."""

    count: np.ndarray  # pixels per bin
    correct: np.ndarray  # of which correctly labelled
    confidence: np.ndarray  # their summed top-class probability
    runs: int  # runs that stored the bins
    images: int  # images summed over those runs

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, len(self.count) + 1)

    @property
    def accuracy(self) -> np.ndarray:
        """Per bin, the share of its pixels labelled correctly (nan for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.correct / np.maximum(self.count, 1), np.nan)

    @property
    def mean_confidence(self) -> np.ndarray:
        """Per bin, the mean top-class probability of its pixels (nan for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.confidence / np.maximum(self.count, 1), np.nan)

    @property
    def share(self) -> np.ndarray:
        """Per bin, its share of all the pixels."""
        return self.count / max(int(self.count.sum()), 1)

    @property
    def ece(self) -> float:
        """The pooled expected calibration error (module docstring)."""
        return float(np.abs(self.correct - self.confidence).sum() / max(int(self.count.sum()), 1))


def _bins(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """``(count, correct, confidence, images)`` summed over a run's images, or None if it stored no bins."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not all(name in data.files for name in FIELDS):
                return None
            count, correct, confidence = (np.asarray(data[name]) for name in FIELDS)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read {path}: {err}; re-run `make rescore` on that run or remove it") from None
    if not (count.ndim == 2 and count.shape == correct.shape == confidence.shape):
        raise ConfigError(f"{path}: the calibration counts are misshapen ({count.shape}, {correct.shape}, "
                          f"{confidence.shape}); re-run `make rescore` on that run or remove it")  # fmt: skip
    return count.sum(0).astype(np.int64), correct.sum(0).astype(np.int64), confidence.sum(0), len(count)


def pool(runs: list[Run]) -> tuple[dict[str, Pooled], list[str]]:
    """``({loss: its pooled bins}, notes)``: losses none of whose runs stored calibration bins are absent, and
    each run without them is named in the notes."""
    pooled: dict[str, Pooled] = {}
    notes = []
    for run in runs:
        found = _bins(run.per_image) if run.per_image and Path(run.per_image).is_file() else None
        if found is None:
            notes.append(f"{run.loss} seed {run.seed}: no calibration counts stored ({run.path})")
            continue
        count, correct, confidence, images = found
        if run.loss not in pooled:
            pooled[run.loss] = Pooled(count, correct, confidence, 1, images)
            continue
        into = pooled[run.loss]
        if len(into.count) != len(count):
            raise ConfigError(f"{run.per_image}: {len(count)} confidence bins where the other runs of {run.loss} "
                              f"have {len(into.count)}; compare runs scored by one version of the metrics")  # fmt: skip
        into.count, into.correct = into.count + count, into.correct + correct
        into.confidence = into.confidence + confidence
        into.runs, into.images = into.runs + 1, into.images + images
    return pooled, notes
