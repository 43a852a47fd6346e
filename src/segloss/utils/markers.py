"""The files that say how a run directory's training ended, read by ``make compare`` (no heavy imports here).

* ``COMPLETED`` — written last, atomically, by a training that ran to its end (JSON: epochs run and planned,
  optimizer steps, whether it stopped early, the best value); removed when a training starts in the folder.
* ``FAILED`` — a sweep job's traceback (``segloss.train``): the sweep went on without it.
"""

COMPLETED = "COMPLETED"
FAILED = "FAILED"
