"""Comparing the runs of a sweep (``make compare``): reading them, testing the differences, rendering.

* :mod:`segloss.comparison.runs` — one :class:`~segloss.comparison.runs.Run` per finished job directory, the
  runs left out and why, and the groups of comparable runs.
* :mod:`segloss.comparison.variance` — the crossed seeds × images variance of a mean or a difference, the
  minimum detectable difference and the seeds a difference needs.
* :mod:`segloss.comparison.significance` — per-image counts, scores, tests, Holm, the marks against the best.
* :mod:`segloss.comparison.summary` — per-loss means and the statistics of one group; ``table`` its text.
* :mod:`segloss.comparison.render` — the rich table and the PNG plots.
* :mod:`segloss.comparison.simulate` — simulated studies that check the statistics' size and coverage.
"""

from segloss.comparison.significance import adjust, best_marks, difference, loss_estimate, plan
from segloss.comparison.variance import detectable, seeds_needed

__all__ = ["adjust", "best_marks", "detectable", "difference", "loss_estimate", "plan", "seeds_needed"]
