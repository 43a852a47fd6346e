"""Intervals, tests and planning for a loss comparison, from the per-image counts of each run's best epoch.

A loss L was trained with seeds s = 1…S and scored on the same M validation images. Per run and class,
``IoU_sc = Σ_i TP_sic / Σ_i (TP + FP + FN)_sic`` (the split-level IoU, :mod:`segloss.metrics.per_image`), the
run's mIoU is the nan-mean over classes (classes with an empty union are nan), and the loss's figure is the
mean over its seeds. The training run is the unit of replication; the images are a second, crossed sample.

* **Interval of a loss's score** (any of mIoU, a class's IoU, :data:`SCORES`): t-interval of the crossed
  seeds × images random-effects model with Satterthwaite degrees of freedom
  (:mod:`segloss.comparison.variance`).
* **Difference of two losses** (:func:`difference`): per-seed Δ_s from the summed counts, paired by seed
  value when both losses have the same seeds (unpaired otherwise), its standard error from the same model,
  a two-sided t-test and interval.
* **Multiplicity** (:func:`adjust`): Holm's step-down p-values (Holm 1979) over a family; a difference is
  **real** when its Holm p < α. The printed interval of a family member is taken at the level of its Holm
  step, 1 − α/(m − k + 1) (frozen at the first step Holm does not reject), so it excludes 0 exactly when the
  difference is real. These step-down intervals are wider than unadjusted ones and match the test's
  decisions; only Bonferroni's (all at 1 − α/m, the first step's level) are simultaneous in the strict
  sense, and the first-ranked comparison's interval is one of those.
* **The best loss** (:func:`best_marks`): every pair of losses is tested, Holm over all k(k − 1)/2 pairs;
  a loss is marked ``<`` when it is worse than at least one other loss in that family, so the chance that
  any loss is wrongly marked worse than the best is at most α (strong control), whichever loss the data
  happen to put on top.
* **What the data can detect** (:func:`variance.detectable`, :func:`variance.seeds_needed`): the minimum
  detectable difference at 80 % power from the observed variance components, and the seeds a given Δ needs.

Validated by simulation (``python -m segloss.comparison.simulate``; ``tests/test_comparison_significance.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from segloss.comparison import variance
from segloss.comparison.variance import Estimate
from segloss.utils.metric_registry import BY_NAME, COMPARED, iou, nanmean

LEVEL, ALPHA, POWER = 0.95, 0.05, 0.8
# Fewest runs per loss for a test of a difference: with two, the seed variance has one degree of freedom and
# the test's tail (where Holm works) is far from nominal in simulation; three hold it.
MIN_SEEDS = 3


@dataclass
class Counts:
    """TP and union (TP + FP + FN) of one loss: arrays S × M × C (seeds, images, classes), with the seeds, and
    the other per-image arrays (S × M × K each) of the quality scores."""

    seeds: list[int]
    tp: np.ndarray
    union: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every per-image array by name: the compared classes' ``iou_tp``/``iou_union`` and the stored parts
        (those keep the runs' own class order: ``tp``, ``fn``, the quality counts)."""
        return {"iou_tp": self.tp, "iou_union": self.union, **self.parts}

    def select(self, seeds: list[int]) -> Counts:
        rows = [self.seeds.index(s) for s in seeds]
        return Counts(list(seeds), self.tp[rows], self.union[rows], {k: v[rows] for k, v in self.parts.items()})


def run_scores(counts: Counts) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: the IoU of each class (S × C) and the mIoU (S) over all images."""
    per_class = iou(counts.tp.sum(1), counts.union.sum(1))
    return per_class, nanmean(per_class, axis=1)


# score → (the per-image arrays it needs, its value from their sums over images: … × K arrays → …); the
# scores and how each is recomputed are decided in segloss.utils.metric_registry.
SCORES: dict[str, tuple[tuple[str, ...], Callable[[dict], np.ndarray]]] = {
    "mIoU": (BY_NAME["mIoU"].per_image, BY_NAME["mIoU"].recompute),
    "IoU": (("iou_tp", "iou_union"), lambda s: iou(s["iou_tp"], s["iou_union"])),  # per compared class: … × C
    **{name: (BY_NAME[name].per_image, BY_NAME[name].recompute) for name in COMPARED},
}


def pseudo_values(counts: Counts, name: str = "mIoU") -> tuple[np.ndarray, np.ndarray] | None:
    """``(θ, y)`` of score ``name`` (:data:`SCORES`): per run (S [× C]) and per run × image (S × M [× C]), or None
    when the runs did not store the arrays it needs."""
    needs, score = SCORES[name]
    arrays = counts.arrays()
    if any(part not in arrays for part in needs):
        return None
    return variance.linearise({part: arrays[part] for part in needs}, score)


def _defined(y: np.ndarray) -> np.ndarray:
    """The rows (seeds) of S × M pseudo-values where the score is defined."""
    return y[~np.isnan(y).any(1)]


def loss_estimate(counts: Counts, name: str = "mIoU") -> Estimate | list[Estimate | None] | None:
    """A loss's mean score over its seeds with its crossed-design standard error (a list over classes for
    ``"IoU"``); None where it has fewer than two seeds with the score defined, or no stored arrays for it."""
    found = pseudo_values(counts, name)
    if found is None:
        return None
    y = found[1]
    if y.ndim == 3:
        return [variance.crossed(_defined(y[..., c])) for c in range(y.shape[2])]
    return variance.crossed(_defined(y))


def difference(a: Counts, b: Counts, name: str = "mIoU", level: float = LEVEL) -> dict | None:
    """A − B in the mean of score ``name``: ``{"delta", "se", "df", "interval", "p", "paired", "seeds",
    "per_seed" (paired Δ_s), "estimate"}``. Paired by seed value when A and B have the same seeds, unpaired
    otherwise; None when a loss has fewer than :data:`MIN_SEEDS` runs (no valid test)."""
    found_a, found_b = pseudo_values(a, name), pseudo_values(b, name)
    if found_a is None or found_b is None:
        return None
    return pseudo_difference((a.seeds, found_a[1]), (b.seeds, found_b[1]), level)


def pseudo_difference(
    a: tuple[list[int], np.ndarray], b: tuple[list[int], np.ndarray], level: float = LEVEL
) -> dict | None:
    """:func:`difference` from each loss's ``(seeds, S × M pseudo-values)``."""
    (seeds_a, ya), (seeds_b, yb) = a, b
    if min(len(seeds_a), len(seeds_b)) < MIN_SEEDS:
        return None
    paired = sorted(seeds_a) == sorted(seeds_b)
    if paired:
        order = sorted(seeds_a)
        d = ya[[seeds_a.index(s) for s in order]] - yb[[seeds_b.index(s) for s in order]]
        d = d[~np.isnan(d).any(1)]
        estimate = variance.crossed(d) if len(d) >= MIN_SEEDS else None
        per_seed, seeds = [float(v) for v in d.mean(1)], len(d)
    else:
        ya, yb = _defined(ya), _defined(yb)
        estimate = variance.unpaired(ya, yb) if min(len(ya), len(yb)) >= MIN_SEEDS else None
        per_seed, seeds = [], (len(ya), len(yb))
    if estimate is None:
        return None
    return {"delta": estimate.mean, "se": estimate.se, "df": estimate.df, "interval": estimate.interval(level),
            "p": estimate.p_value(), "paired": paired, "seeds": seeds, "per_seed": per_seed,
            "estimate": estimate}  # fmt: skip


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values: the k-th smallest of m is multiplied by m − k + 1, kept monotone, capped at 1."""
    order = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for k, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p_values[name]))
        adjusted[name] = running
    return adjusted


def step_levels(p_values: dict[str, float], alpha: float = ALPHA) -> dict[str, int]:
    """Holm's divisor for each hypothesis: m − k + 1 at its step k (by raw p), frozen at the first step that
    is not rejected, so that the interval at level 1 − α/divisor excludes 0 exactly when Holm rejects."""
    order, divisors, stopped = sorted(p_values, key=p_values.get), {}, None
    for k, key in enumerate(order):
        divisor = stopped or len(order) - k
        if stopped is None and p_values[key] * divisor >= alpha:
            stopped = divisor
        divisors[key] = divisor
    return divisors


def adjust(family: dict, alpha: float = ALPHA, power: float = POWER) -> dict:
    """Each result of a family (:func:`difference`) with ``p_holm``, ``real`` (p_holm < α), the ``adjusted``
    interval at the level of its Holm step (:func:`step_levels`: it excludes 0 exactly when the difference is
    real) and ``mdd``: the smallest |Δ| this design detects with ``power`` at the family's first-step level α/m
    (an upper bound for Holm's later steps)."""
    m = max(len(family), 1)
    raw = {key: r["p"] for key, r in family.items()}
    adjusted, divisors = holm(raw), step_levels(raw, alpha)
    out = {}
    for key, r in family.items():
        estimate = r["estimate"]
        out[key] = {**r, "p_holm": adjusted[key], "real": adjusted[key] < alpha,
                    "adjusted": estimate.interval(1 - alpha / divisors[key]),
                    "mdd": variance.detectable(estimate.components, alpha / m, power)}  # fmt: skip
    return out


def is_real(result: dict) -> bool:
    """Whether an :func:`adjust` ed result is a real difference: Holm-adjusted p < α."""
    return bool(result.get("real", result["p_holm"] < ALPHA))


def best_marks(counts: dict[str, Counts], alpha: float = ALPHA) -> dict[str, str]:
    """Per loss: ``best`` (the highest mean mIoU), ``<`` (worse than at least one other loss, Holm over all
    pairs of losses) or ``≈`` (not shown worse than any). Losses without a valid test get ``—``."""
    means = {loss: float(np.nanmean(run_scores(c)[1])) for loss, c in counts.items()}
    if not means:
        return {}
    losses = sorted(means, key=means.get, reverse=True)
    pseudo = {loss: (c.seeds, pseudo_values(c)[1]) for loss, c in counts.items()}  # once per loss
    pairs = {}
    for i, first in enumerate(losses):
        for second in losses[i + 1 :]:
            found = pseudo_difference(pseudo[first], pseudo[second])
            if found is not None:
                pairs[(first, second)] = found
    adjusted = holm({key: r["p"] for key, r in pairs.items()})
    tested = {loss for pair in pairs for loss in pair}
    worse = {(second if pairs[(first, second)]["delta"] > 0 else first) for (first, second), p in adjusted.items()
             if p < alpha}  # fmt: skip
    marks = {loss: "<" if loss in worse else "≈" if loss in tested else "—" for loss in losses}
    if marks[losses[0]] == "≈":
        marks[losses[0]] = "best"
    return marks


def plan(result: dict, delta: float, alpha: float, power: float = POWER) -> dict:
    """For one comparison's observed variance components: the seeds per loss that detect ``delta`` (None when
    no number of seeds does with these images) and the floor that images alone leave (the MDD with 1000
    seeds)."""
    components = result["estimate"].components
    return {
        "seeds": variance.seeds_needed(components, delta, alpha, power),
        "floor": variance.detectable(components, alpha, power, 1000),
        "mdd_now": variance.detectable(components, alpha, power),
        "components": components,
    }
