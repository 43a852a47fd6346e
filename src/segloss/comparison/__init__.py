"""Comparing the runs of a sweep (``make compare``): reading them, summarising per loss, rendering.

* :mod:`segloss.comparison.runs` — one :class:`Run` per job directory (local CSV metrics, no W&B needed).
* :mod:`segloss.comparison.summary` — per-loss mean ± std over seeds, Markdown table.
* :mod:`segloss.comparison.render` — the rich table and the PNG plots.
"""
