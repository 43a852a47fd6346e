"""Simulated loss studies in the per-image format of ``make compare``, to check its statistics.

``python -m segloss.comparison.simulate [--studies N]`` prints the size (how often a true null is called
real), family-wise error over a table, interval coverage and power of :mod:`segloss.comparison.significance` in
three regimes; ``tests/test_comparison_significance.py`` runs a smaller, seeded version of the same checks.

The generator (all effects on the logit of a pixel's chance to be found, one study = S seeds × M images
× C classes per loss):

    p_{L,s,i,c} = σ(β_c + δ_L + a_{L,s} + u_{L,s,c} + b_i + b_{i,c} + g_{L,i} + g_{L,i,c})

* ``δ_L`` the loss's true effect (0 under the null);
* ``a_{L,s} ~ N(0, run²)`` a training run's effect, ``u_{L,s,c} ~ N(0, (run/2)²)`` its per-class part
  (optionally shared by the same seed of every loss: ``shared``, what pairing by seed removes);
* ``b_i, b_{i,c}`` the image's difficulty (shared by all runs and losses);
* ``g_{L,i}, g_{L,i,c} ~ N(0, image_loss²)`` how the loss fares on that image, the same in every seed;
* pixel noise: TP ~ Binomial(n_ic, p), FP ~ Binomial(⌈0.4·n_ic⌉ + 20, 1 − p) on each image, with n_ic the
  class's pixels (classes absent from an image with probability 0.3).

Calibrated to the study of ``docs/results.md``: mIoU ≈ 0.5 and, in the seed-dominated regime, a per-seed
SD of a loss's Δ to CE of ≈ 2.5–3.5 points.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from segloss.comparison import significance
from segloss.comparison.significance import Counts


@dataclass(frozen=True)
class Regime:
    run: float  # SD of a training run's logit effect
    image_loss: float  # SD of a loss's per-image effect, the same in every seed
    shared: float = 0.0  # SD of a seed's effect shared by every loss trained with that seed


REGIMES = {
    "seed-dominated": Regime(run=0.1, image_loss=0.05, shared=0.05),
    "low seed variance": Regime(run=0.03, image_loss=0.08),
    "image×loss only": Regime(run=0.0, image_loss=0.12),
}


def simulate(
    rng: np.random.Generator, effects: dict[str, float], regime: Regime, seeds: int = 5, images: int = 60,
    classes: int = 9,
) -> dict[str, Counts]:  # fmt: skip
    """One study: per loss (``effects``: name → δ_L on the logit scale) the :class:`Counts` of ``seeds`` runs."""
    base = rng.normal(0.3, 0.6, classes)
    difficulty = rng.normal(0, 0.5, (images, 1)) + rng.normal(0, 0.4, (images, classes))
    pixels = np.where(rng.random((images, classes)) < 0.3, 0, rng.integers(200, 3000, (images, classes)))
    shared = rng.normal(0, regime.shared, (seeds, 1, 1))
    out = {}
    for loss, effect in effects.items():
        run = rng.normal(0, regime.run, (seeds, 1, 1)) + rng.normal(0, regime.run / 2, (seeds, 1, classes))
        on_image = rng.normal(0, regime.image_loss, (1, images, 1)) + rng.normal(
            0, regime.image_loss, (1, images, classes)
        )
        logit = base + effect + run + shared + difficulty + on_image
        p = 1 / (1 + np.exp(-logit))
        n = np.broadcast_to(pixels, p.shape)
        tp = rng.binomial(n, p)
        fp = rng.binomial(np.ceil(0.4 * n).astype(np.int64) + 20, 1 - p)
        fn = n - tp
        out[loss] = Counts(list(range(seeds)), tp, tp + fp + fn, {"tp": tp, "fn": fn})
    return out


def size_and_coverage(regime: Regime, studies: int, seeds: int = 5, images: int = 60, seed: int = 0) -> dict:
    """Two losses with no difference, ``studies`` times: the share called real at α = 0.05 (one comparison,
    so Holm is the raw p) and the share of 95 % intervals that hold the true Δ = 0."""
    rng = np.random.default_rng(seed)
    rejected = covered = 0
    for _ in range(studies):
        counts = simulate(rng, {"a": 0.0, "b": 0.0}, regime, seeds, images)
        r = significance.difference(counts["a"], counts["b"])
        rejected += r["p"] < significance.ALPHA
        low, high = r["interval"]
        covered += low <= 0 <= high
    return {"size": rejected / studies, "coverage": covered / studies}


def family_error(
    regime: Regime, studies: int, losses: int = 12, seeds: int = 5, images: int = 60, seed: int = 0, best: bool = True
) -> dict:
    """Tables of ``losses`` equal losses: the share with any loss marked real against the baseline (Holm over
    ``losses − 1``), and (``best``) the share with any loss marked ``<`` against the best (Holm over all pairs)."""
    rng = np.random.default_rng(seed)
    any_real = any_worse = 0
    for _ in range(studies):
        counts = simulate(rng, {f"l{k}": 0.0 for k in range(losses)}, regime, seeds, images)
        family = {k: significance.difference(counts[k], counts["l0"]) for k in counts if k != "l0"}
        any_real += any(r["real"] for r in significance.adjust(family).values())
        any_worse += best and "<" in significance.best_marks(counts).values()
    return {"baseline_fwer": any_real / studies, "best_fwer": any_worse / studies if best else None}


def power(regime: Regime, effect: float, studies: int, seeds: int = 5, images: int = 60, seed: int = 0) -> dict:
    """One loss better by ``effect`` on the logit scale: the mean Δ in mIoU points it produces, the mean
    per-seed SD of Δ (how much the runs disagree) and the share of studies that call it real (p < α)."""
    rng = np.random.default_rng(seed)
    found, deltas, spreads = 0, [], []
    for _ in range(studies):
        counts = simulate(rng, {"a": effect, "b": 0.0}, regime, seeds, images)
        r = significance.difference(counts["a"], counts["b"])
        found += r["p"] < significance.ALPHA and r["delta"] > 0
        deltas.append(r["delta"])
        spreads.append(np.std(r["per_seed"], ddof=1))
    return {"delta_points": 100 * float(np.mean(deltas)), "power": found / studies,
            "seed_sd_points": 100 * float(np.mean(spreads))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000, help="simulated studies per cell (default 1000)")
    parser.add_argument("--tables", type=int, default=200, help="simulated 12-loss tables per regime (default 200)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.tables < 1:
        parser.error("--studies and --tables must be positive")
    print(f"{args.studies} studies per cell, {args.tables} tables of 12 losses per regime; M = 60 images, C = 9")
    print("| regime | seeds | size (α = 0.05) | 95 % coverage | FWER vs baseline (11) | FWER vs best (66 pairs) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, regime in REGIMES.items():
        for seeds in (3, 5, 10):
            sc = size_and_coverage(regime, args.studies, seeds)
            fw = family_error(regime, args.tables, seeds=seeds) if seeds != 3 else None
            fw_text = f"{fw['baseline_fwer']:.3f} | {fw['best_fwer']:.3f}" if fw else "— | —"
            print(f"| {name} | {seeds} | {sc['size']:.3f} | {sc['coverage']:.3f} | {fw_text} |")
    print("\n| regime | seeds | per-seed SD of Δ (points) | logit effect | mean Δ (points) | power |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, regime in REGIMES.items():
        for seeds in (5, 10):
            for effect in (0.1, 0.2):
                found = power(regime, effect, args.studies, seeds)
                print(f"| {name} | {seeds} | {found['seed_sd_points']:.1f} | {effect} | {found['delta_points']:+.1f} | "
                      f"{found['power']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
