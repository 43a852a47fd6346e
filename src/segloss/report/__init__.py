"""``make report DIR=<sweep>``: a sweep's comparison as one self-contained HTML page, with its figures for a paper.

From what a sweep already stores (:func:`segloss.comparison.runs.load_runs`: job folders, or the ``runs.json`` +
``per_image/`` of ``make compare``), per group of comparable runs (:func:`segloss.comparison.groups.group_runs`):
the comparison table of ``make compare`` (the same functions, rendered as HTML), a forest plot of each loss's
difference to the baseline, a per-class IoU heatmap, reliability diagrams, mIoU-vs-epoch curves with seed bands,
the validation images on which two losses disagree most (:mod:`segloss.report.disagree`) and the commands,
config hashes and environment that produced the runs (:mod:`segloss.report.provenance`).

``python -m segloss.report DIR [--baseline LOSS] [--pair A,B] [--images N] [--out FOLDER] [--formats png,pdf,svg]``
writes ``OUT/report.html`` (opens offline: figures embedded as PNG data, no external CSS, scripts or fonts) and
``OUT/figures/`` (each figure as PNG, PDF and SVG; LaTeX takes the PDF). :mod:`segloss.report.cli`.
"""
