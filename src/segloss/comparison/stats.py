"""Intervals and paired tests for a loss comparison, from the per-image TP/FP/FN of each run's best epoch.

A loss L was trained with seeds s = 1…S and scored on the same M validation images. Per run and class,
``IoU_sc = Σ_i TP_sic / Σ_i (TP + FP + FN)_sic`` (the split-level IoU, :mod:`segloss.metrics.per_image`), the
run's mIoU is the nan-mean over classes (classes with an empty union are nan), and the loss's figure is the
mean over its seeds. Two sources of noise: which seeds were drawn, and which images make the split.

* **Interval** (95 %, percentile bootstrap; Efron & Tibshirani 1993): each replicate draws S seeds and M
  images with replacement (the same images for every seed: the split is shared), recomputes every IoU from
  the resampled sums and averages over the drawn seeds. Seeds and images are resampled together because
  both vary between studies; with 3 seeds the seed part is coarse, which the interval shows honestly
  by being wide. A t-interval over seeds would ignore the image sample and assume normality.
* **Paired test** of loss A against loss B (a baseline, or the best loss), on the seeds both have (matched
  by seed value) and the same images: the statistic is ``d = mean_s (mIoU_A,s − mIoU_B,s)``. Under the null
  hypothesis that A and B are interchangeable, swapping A's and B's counts of any (seed, image) leaves the
  distribution of d unchanged, so the p-value is the share of random swaps (each pair swapped with
  probability 1/2) whose |d| reaches the observed |d|, counted as ``(1 + hits) / (1 + permutations)``
  (approximate randomisation, Noreen 1989). It needs no normality and respects that mIoU is a ratio of
  sums, not a mean of per-image scores. The difference's interval comes from the paired bootstrap (the
  same seeds and images drawn for A and B).
* **Multiple comparisons**: Holm's step-down correction (Holm 1979) over the comparisons of one table,
  which controls the family-wise error rate at α without assuming independence.
* **What counts as real** (:func:`is_real`): the permutation test asks whether these trained nets differ
  beyond the sampling of images (the unit of challenge analyses, e.g. Wiesenfarth et al., Sci. Rep. 2021);
  it holds the seeds fixed, so it does not see how much another set of seeds would move the result. The
  interval does. A difference is called real only when both agree: Holm-adjusted p < α *and* the paired
  interval excludes 0. With few seeds the interval is the stricter of the two.

* **The other scores** (Boundary IoU, recall, small-object recall, ECE, NLL: :data:`SCORES`) are, like IoU,
  functions of per-image sums (band intersections and unions, calibration bins, …, stored by
  :class:`segloss.metrics.per_image.PerImageCounts`), so :func:`bootstrap_score` gives them the same interval
  over seeds × images. Their paired tests are not computed: the table tests mIoU.

Everything is seeded (``seed``), so a comparison prints the same numbers every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

LEVEL, ALPHA = 0.95, 0.05


@dataclass
class Counts:
    """TP and union (TP + FP + FN) of one loss: arrays S × M × C (seeds, images, classes), with the seeds."""

    seeds: list[int]
    tp: np.ndarray
    union: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # other per-image arrays, S × M × K each

    def select(self, seeds: list[int]) -> Counts:
        rows = [self.seeds.index(s) for s in seeds]
        return Counts(list(seeds), self.tp[rows], self.union[rows], {k: v[rows] for k, v in self.parts.items()})


def iou(tp: np.ndarray, union: np.ndarray) -> np.ndarray:
    """TP / union with nan where the union is 0 (a class absent from truth and prediction)."""
    tp, union = np.asarray(tp, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.divide(tp, union, out=np.full(np.broadcast(tp, union).shape, np.nan), where=union > 0)


def nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring nan; nan where every value is nan (no warning)."""
    counted = (~np.isnan(values)).sum(axis)
    total = np.nansum(values, axis)
    return np.divide(total, counted, out=np.full(total.shape, np.nan), where=counted > 0)


def run_scores(counts: Counts) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: the IoU of each class (S × C) and the mIoU (S) over all images."""
    per_class = iou(counts.tp.sum(1), counts.union.sum(1))
    return per_class, nanmean(per_class, axis=1)


def _resampled_scores(counts: Counts, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU (B × S × C) and mIoU (B × S) under image weights ``images`` (B × M, multiplicities)."""
    tp = np.einsum("bm,smc->bsc", images, counts.tp, optimize=True)
    union = np.einsum("bm,smc->bsc", images, counts.union, optimize=True)
    per_class = iou(tp, union)
    return per_class, nanmean(per_class, axis=2)


def _draws(rng: np.random.Generator, replicates: int, seeds: int, images: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicities of seeds (B × S) and images (B × M) of ``replicates`` bootstrap samples."""
    seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=replicates).astype(np.float64)
    image_weights = rng.multinomial(images, np.full(images, 1 / images), size=replicates).astype(np.float64)
    return seed_weights, image_weights


def _seed_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over the seed axis (1) of B × S [× C] values, ignoring nan."""
    w = weights.reshape(weights.shape + (1,) * (values.ndim - 2))
    w = np.where(np.isnan(values), 0.0, w)
    total = np.nansum(values * w, axis=1)
    mass = w.sum(1)
    return np.divide(total, mass, out=np.full(total.shape, np.nan), where=mass > 0)


def _percentiles(values: np.ndarray) -> np.ndarray:
    """The central LEVEL interval along axis 0 (nan-aware): 2 × …."""
    tail = 100 * (1 - LEVEL) / 2
    out = np.full((2, *values.shape[1:]), np.nan)
    finite = ~np.all(np.isnan(values), axis=0)
    if finite.any():
        out[:, finite] = np.nanpercentile(values[:, finite], [tail, 100 - tail], axis=0)
    return out


def bootstrap_interval(counts: Counts, replicates: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """95 % intervals of the mean mIoU (``"mIoU"``: 2) and of each class's mean IoU (``"IoU"``: 2 × C)."""
    rng = np.random.default_rng(seed)
    seed_weights, image_weights = _draws(rng, replicates, len(counts.seeds), counts.tp.shape[1])
    per_class, miou = _resampled_scores(counts, image_weights)
    return {
        "mIoU": _percentiles(_seed_mean(miou, seed_weights)[:, None])[:, 0],
        "IoU": _percentiles(_seed_mean(per_class, seed_weights)),
    }


def paired_difference(
    a: Counts, b: Counts, permutations: int = 2000, replicates: int = 2000, seed: int = 0, chunk: int = 250
) -> dict | None:
    """A − B in mean mIoU on their common seeds: ``{"delta", "interval" (2), "p", "seeds"}``; None without a
    common seed. The p-value is two-sided, from ``permutations`` random swaps of (seed, image) pairs."""
    common = [s for s in a.seeds if s in b.seeds]
    if not common:
        return None
    a, b = a.select(common), b.select(common)
    delta = float(np.mean(run_scores(a)[1] - run_scores(b)[1]))
    rng = np.random.default_rng(seed)
    d_tp, d_union = b.tp - a.tp, b.union - a.union  # S × M × C: what a swap moves from B to A
    sum_a, sum_b = (a.tp.sum(1), a.union.sum(1)), (b.tp.sum(1), b.union.sum(1))
    hits, done = 0, 0
    while done < permutations:
        n = min(chunk, permutations - done)
        swap = rng.integers(0, 2, size=(n, *a.tp.shape[:2])).astype(np.float64)  # P × S × M
        moved_tp = np.einsum("psm,smc->psc", swap, d_tp, optimize=True)
        moved_union = np.einsum("psm,smc->psc", swap, d_union, optimize=True)
        miou_a = nanmean(iou(sum_a[0] + moved_tp, sum_a[1] + moved_union), axis=2)
        miou_b = nanmean(iou(sum_b[0] - moved_tp, sum_b[1] - moved_union), axis=2)
        permuted = np.mean(miou_a - miou_b, axis=1)
        hits += int(np.sum(np.abs(permuted) >= abs(delta) - 1e-12))
        done += n
    seed_weights, image_weights = _draws(rng, replicates, len(common), a.tp.shape[1])
    diff = _resampled_scores(a, image_weights)[1] - _resampled_scores(b, image_weights)[1]
    interval = _percentiles(_seed_mean(diff, seed_weights)[:, None])[:, 0]
    return {"delta": delta, "interval": interval, "p": (1 + hits) / (1 + permutations), "seeds": len(common)}


def _class_mean(hits: np.ndarray, total: np.ndarray) -> np.ndarray:
    return nanmean(iou(hits, total), axis=-1)


# score → (the per-image arrays it needs, its value from their sums over images: … × K arrays → …)
SCORES: dict[str, tuple[tuple[str, ...], Callable[[dict], np.ndarray]]] = {
    "mBIoU": (("band_inter", "band_union"), lambda s: _class_mean(s["band_inter"], s["band_union"])),
    "mRecall": (("tp", "fn"), lambda s: _class_mean(s["tp"], s["tp"] + s["fn"])),
    "mSmallRecall": (("small_found", "small_objects"), lambda s: _class_mean(s["small_found"], s["small_objects"])),
    "ECE": (
        ("calib_count", "calib_correct", "calib_confidence"),
        lambda s: np.abs(s["calib_correct"] - s["calib_confidence"]).sum(-1) / s["calib_count"].sum(-1),
    ),
    "NLL": (("nll_sum", "calib_count"), lambda s: s["nll_sum"][..., 0] / s["calib_count"].sum(-1)),
}


def bootstrap_score(name: str, counts: Counts, replicates: int = 2000, seed: int = 0) -> np.ndarray | None:
    """95 % interval (2) of the mean over seeds of score ``name`` (:data:`SCORES`), resampling seeds and images
    as :func:`bootstrap_interval`; None when the runs did not store its per-image arrays."""
    needs, score = SCORES[name]
    if any(part not in counts.parts for part in needs):
        return None
    rng = np.random.default_rng(seed)
    seed_weights, image_weights = _draws(rng, replicates, len(counts.seeds), counts.tp.shape[1])
    sums = {
        part: np.einsum("bm,smk->bsk", image_weights, counts.parts[part].astype(np.float64), optimize=True)
        for part in needs
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        values = score(sums)  # B × S
    return _percentiles(_seed_mean(values, seed_weights)[:, None])[:, 0]


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values: the k-th smallest of m is multiplied by m − k + 1, kept monotone, capped at 1."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for k, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p_values[name]))
        adjusted[name] = running
    return adjusted


def is_real(result: dict) -> bool:
    """Whether a :func:`paired_difference` result (with ``p_holm``) is a real difference (module docstring)."""
    low, high = result["interval"]
    return result["p_holm"] < ALPHA and (low > 0 or high < 0)
