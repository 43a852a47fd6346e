"""The uncertainty of a loss's score, and of the difference between two losses, over seeds × images.

A loss L is trained with seeds s = 1…S; every run is scored on the same M validation images. A score (mIoU,
a class's IoU, Boundary IoU, ECE, …) is a function of sums over images, ``θ_s = f(Σ_i t_si)`` — a ratio of
sums, not a mean of per-image scores. Two things vary from one study to the next: the training runs (which
seeds were drawn: the unit of replication, Bouthillier et al., MLSys 2021) and the images (which ones make
the split). The images are crossed with the runs, so neither a test over images with the nets held fixed
nor a bootstrap of the runs alone has the right variance (Owen, Ann. Appl. Stat. 2007; McCullagh,
Bernoulli 2000).

**Linearisation.** Each run's score is split into per-image pseudo-values ``y_si = θ_s + ∇f(T_s)·(M t_si −
T_s)`` (the empirical influence function of the ratio, i.e. the delta method), so that ``mean_i y_si = θ_s``
exactly and the per-image spread of ``y`` is the image sampling variance of θ. The gradient is taken by
central differences along each image's direction (any score of :data:`segloss.comparison.significance.SCORES`,
nan-aware: a class with an empty union stays out of the class mean, as in the score itself).

**Crossed random effects.** ``y_si = μ + a_s + b_i + e_si`` with a run effect ``a`` (variance σ²_seed), an
image effect ``b`` (σ²_image) and a run × image residual ``e`` (σ²_res) — the linearised mixed model
(1|seed:loss) + (1|image) + (1|image:loss) of the study. The mean's variance is

    Var(ȳ) = σ²_seed / S + σ²_image / M + σ²_res / (S·M),

estimated from the two-way ANOVA mean squares ``MS_seed = M·Σ_s(ȳ_s − ȳ)²/(S−1)``, ``MS_image =
S·Σ_i(ȳ_i − ȳ)²/(M−1)`` and ``MS_res`` (the interaction, (S−1)(M−1) degrees of freedom) through their
expectations ``MS_res + M·σ²_seed``, ``MS_res + S·σ²_image``, ``MS_res``, each component clipped at 0. The
interval and the test use Student's t with Satterthwaite's degrees of freedom for that combination of mean
squares (Satterthwaite, Biometrics 1946): with five seeds and a large run-to-run spread they fall to ≈ 4 and
the test is the paired t-test over seeds; when the runs agree and the images carry the variance they rise
towards M − 1.

**The degrees of freedom, guarded.** Satterthwaite's ν is computed from the same mean squares as the
variance: when MS_seed (S − 1 degrees of freedom) comes out small by chance, the variance is underestimated
*and* ν inflated together, so the test is liberal in its tail — where Holm works (α/m). Simulated (5 seeds,
20 000 nulls of the seed-dominated regime of :mod:`segloss.comparison.simulate`), plain Satterthwaite
rejects 1.7× the nominal rate at p < 0.005 and 3.4× at p < 0.001, and 16 % of 300 null tables of 12 losses
marked a loss worse than the best. So ν is computed with each seed mean square at its 95 % upper confidence
bound, ``MS_seed·(S−1)/χ²_{0.05, S−1}``; the variance itself is not changed. With that the tail rates are near
or below nominal (seed-dominated: 0.85× and 0.90×; conservative where the seed variance is small), and the
family-wise errors hold (``docs/results.md``, "Method").

* **Paired** (two losses trained with the same seed values): ``d_si = y^A_si − y^B_si`` in the same model;
  a seed's shared initialisation and data order cancels, the image difficulty cancels, the image × loss
  effect stays in σ²_image.
* **Unpaired** (different seeds): ``Var = σ²_seed,A/S_A + σ²_seed,B/S_B + σ²_g/M + σ²_res,A/(S_A·M) +
  σ²_res,B/(S_B·M)``, σ²_g the variance over images of the image × loss effect, estimated from
  ``D_i = ȳ^A_i − ȳ^B_i`` (its variance over images minus the residual shares).

With one seed the run-to-run variance cannot be estimated: there is no interval and no test (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

# (coefficient, mean square, degrees of freedom, guarded): a guarded (seed) mean square enters the degrees of
# freedom at its upper confidence bound (module docstring)
Term = tuple[float, float, float, bool]
GUARD = 0.05  # MS·df/χ²_{GUARD, df}: the 95 % upper bound


def linearise(sums: dict[str, np.ndarray], score: Callable[[dict], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(θ, y)``: the score of each run (S [× C]) from per-image arrays ``sums`` (each S × M × K), and its
    per-image pseudo-values (S × M [× C]) whose mean over images is θ (module docstring)."""
    per_image = {k: np.asarray(v, dtype=np.float64) for k, v in sums.items()}
    images = next(iter(per_image.values())).shape[1]
    total = {k: v.sum(1, keepdims=True) for k, v in per_image.items()}  # S × 1 × K
    step = 1e-6 / images  # a relative change ≤ 1e-6 of any sum: far from the kinks, far above round-off
    with np.errstate(invalid="ignore", divide="ignore"):
        theta = score({k: v[:, 0] for k, v in total.items()})
        up = score({k: total[k] + step * (images * v - total[k]) for k, v in per_image.items()})
        down = score({k: total[k] - step * (images * v - total[k]) for k, v in per_image.items()})
    return theta, theta[:, None] + (up - down) / (2 * step)


@dataclass(frozen=True)
class Components:
    """Variance components of one sample mean (a loss's score, or a difference of two losses): σ²_seed per
    run, σ²_image per image, σ²_res per run × image; ``seeds`` × ``images`` observed."""

    seed: float
    image: float
    residual: float
    seeds: int
    images: int

    def variance(self, seeds: int | None = None, images: int | None = None) -> float:
        s, m = seeds or self.seeds, images or self.images
        return self.seed / s + self.image / m + self.residual / (s * m)

    def terms(self, seeds: int | None = None) -> list[Term]:
        """The mean squares a design of ``seeds`` runs would have in expectation, as Satterthwaite terms."""
        s, m = seeds or self.seeds, self.images
        return _crossed_terms(self.residual + m * self.seed, self.residual + s * self.image, self.residual, s, m)


@dataclass(frozen=True)
class Estimate:
    """A mean (or a difference) with its standard error, Satterthwaite degrees of freedom and components."""

    mean: float
    se: float
    df: float
    components: Components

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        half = t_quantile(1 - (1 - level) / 2, self.df) * self.se
        return self.mean - half, self.mean + half

    def p_value(self) -> float:
        """Two-sided p of ``mean = 0`` (Student's t with ``df``)."""
        if self.se == 0:
            return 0.0 if self.mean != 0 else 1.0
        t = abs(self.mean) / self.se
        return float(2 * (special.stdtr(self.df, -t) if math.isfinite(self.df) else special.ndtr(-t)))


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (scipy.special's ufuncs: the distribution objects cost ~100× more per call)."""
    return float(special.stdtrit(df, q)) if math.isfinite(df) else float(special.ndtri(q))


def satterthwaite(terms: list[Term]) -> tuple[float, float]:
    """``(V, ν)``: ``V = Σ c_k·MS_k`` and its Satterthwaite degrees of freedom ``V'² / Σ (c_k·MS'_k)² / df_k``,
    where MS' is a guarded mean square's upper bound (module docstring) and V' the sum with them."""
    terms = _merge(terms)
    variance = sum(c * ms for c, ms, _, _ in terms)
    bounded = [
        (c, ms * df / special.chdtri(df, 1 - GUARD) if guarded and df > 0 else ms, df) for c, ms, df, guarded in terms
    ]
    spread = sum((c * ms) ** 2 / df for c, ms, df in bounded if df > 0)
    return max(variance, 0.0), (sum(c * ms for c, ms, _ in bounded) ** 2 / spread if spread > 0 else math.inf)


def _crossed_terms(ms_seed: float, ms_image: float, ms_res: float, s: int, m: int) -> list[Term]:
    """Var(ȳ) = σ²_seed/S + σ²_image/M + σ²_res/(S·M) in mean squares, components clipped at 0."""
    scale, res_df = 1 / (s * m), (s - 1) * max(m - 1, 1)
    terms = [(scale, ms_res, res_df, False)]
    if ms_seed > ms_res:
        terms += [(scale, ms_seed, s - 1, True), (-scale, ms_res, res_df, False)]
    if ms_image > ms_res and m > 1:
        terms += [(scale, ms_image, m - 1, False), (-scale, ms_res, res_df, False)]
    return terms


def _anova(y: np.ndarray) -> tuple[float, float, float, int, int]:
    """Mean squares (seed, image, residual) of an S × M table with one value per cell."""
    s, m = y.shape
    grand, by_seed, by_image = y.mean(), y.mean(1), y.mean(0)
    ms_seed = m * float(np.sum((by_seed - grand) ** 2)) / (s - 1)
    ms_image = s * float(np.sum((by_image - grand) ** 2)) / (m - 1) if m > 1 else 0.0
    rest = y - by_seed[:, None] - by_image[None, :] + grand
    ms_res = float(np.sum(rest**2)) / ((s - 1) * (m - 1)) if m > 1 else 0.0
    return ms_seed, ms_image, ms_res, s, m


def crossed(y: np.ndarray) -> Estimate | None:
    """The mean of S × M pseudo-values (a loss's runs, or paired differences) with its crossed-design
    variance; None with fewer than two seeds."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] < 2:
        return None
    ms_seed, ms_image, ms_res, s, m = _anova(y)
    seed, image = max(ms_seed - ms_res, 0.0) / m, max(ms_image - ms_res, 0.0) / s
    variance, df = satterthwaite(_crossed_terms(ms_seed, ms_image, ms_res, s, m))
    return Estimate(float(y.mean()), math.sqrt(variance), df, Components(seed, image, ms_res, s, m))


def unpaired(y_a: np.ndarray, y_b: np.ndarray) -> Estimate | None:
    """Mean of A minus mean of B for runs that share the images but not the seeds (module docstring); None
    when either loss has fewer than two seeds."""
    y_a, y_b = np.asarray(y_a, dtype=np.float64), np.asarray(y_b, dtype=np.float64)
    if min(y_a.shape[0], y_b.shape[0]) < 2:
        return None
    terms, seed_part, res_share = [], 0.0, 0.0
    for y in (y_a, y_b):
        ms_seed, _, ms_res, s, m = _anova(y)
        seed_part += max(ms_seed - ms_res, 0.0) / (m * s)
        res_share += ms_res / s
        if ms_seed > ms_res:
            terms += [(1 / (s * m), ms_seed, s - 1, True), (-1 / (s * m), ms_res, (s - 1) * max(m - 1, 1), False)]
        terms.append((1 / (s * m), ms_res, (s - 1) * max(m - 1, 1), False))
    m = y_a.shape[1]
    images = y_a.mean(0) - y_b.mean(0)
    ms_d = float(np.var(images, ddof=1)) if m > 1 else 0.0
    g = max(ms_d - res_share, 0.0)
    if g > 0:  # σ²_g/M = (MS_D − Σ MS_res,L/S_L)/M
        terms.append((1 / m, ms_d, m - 1, False))
        for y in (y_a, y_b):
            ms_res, s = _anova(y)[2], y.shape[0]
            terms.append((-1 / (s * m), ms_res, (s - 1) * (m - 1), False))
    variance, df = satterthwaite(terms)
    s_eff = 2 / (1 / y_a.shape[0] + 1 / y_b.shape[0])  # harmonic: the components per seed of a paired design
    components = Components(seed_part * s_eff, g, res_share * s_eff, round(s_eff), m)
    return Estimate(float(y_a.mean() - y_b.mean()), math.sqrt(variance), df, components)


def _merge(terms: list[Term]) -> list[Term]:
    """Add the coefficients of terms that are the same mean square (so Satterthwaite counts it once)."""
    merged: dict[tuple[float, float, bool], float] = {}
    for c, ms, df, guarded in terms:
        merged[(ms, df, guarded)] = merged.get((ms, df, guarded), 0.0) + c
    return [(c, ms, df, guarded) for (ms, df, guarded), c in merged.items() if c != 0]


def detectable(components: Components, alpha: float, power: float = 0.8, seeds: int | None = None) -> float:
    """The smallest |Δ| a two-sided level-``alpha`` test detects with ``power`` in a design of ``seeds`` runs
    per loss with these variance components: ``(t_{1−α/2,ν} + t_{power,ν})·SE`` (the normal-theory
    approximation of the noncentral t)."""
    variance, df = satterthwaite(components.terms(seeds))
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * math.sqrt(variance)


def seeds_needed(
    components: Components, delta: float, alpha: float, power: float = 0.8, limit: int = 1000
) -> int | None:
    """The fewest seeds per loss (≥ 2) that detect ``|delta|`` with ``power``; None when even ``limit`` seeds
    do not (the image × loss part, σ²_image/M, does not shrink with seeds: more images are needed)."""
    if detectable(components, alpha, power, limit) > abs(delta):
        return None
    low, high = 2, limit
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if detectable(components, alpha, power, mid) <= abs(delta) else (mid + 1, high)
    return low
