"""Every callback of the template beyond Lightning's own.

* :class:`LatestCheckpoint` — Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always the latest state
  (it lives in :mod:`segloss.utils.lightning_adapter`, the one module that uses Lightning's private API).
* :class:`SignalCheckpoint` — checkpoint and stop on SIGTERM, SIGINT or SIGUSR1.
* :class:`PredictionGrid` — image | ground truth | prediction PNGs after each validation.
* :class:`PredictionWriter` — every evaluation prediction as a label file (official result formats).
* :class:`WandbMedia` — per-class table, confusion matrix and prediction overlays in W&B.
* :class:`ThreadsFollowLoad` — the CPU intra-op thread count follows the load of other processes.

Pictures drawn by PredictionGrid and WandbMedia undo exactly the normalisation of the data config (the module's
``input_mean``/``input_std``; uint8 batches of ``data.normalize_on_device`` pass unchanged).
"""

from segloss.callbacks.pictures import FirstPredictions, PredictionGrid
from segloss.callbacks.predictions import PredictionWriter
from segloss.callbacks.signals import SignalCheckpoint, StoppedBySignal, stop_signals
from segloss.callbacks.threads import ThreadsFollowLoad
from segloss.callbacks.wandb_media import WandbMedia
from segloss.utils.lightning_adapter import LatestCheckpoint

__all__ = [
    "FirstPredictions",
    "LatestCheckpoint",
    "PredictionGrid",
    "PredictionWriter",
    "SignalCheckpoint",
    "StoppedBySignal",
    "ThreadsFollowLoad",
    "WandbMedia",
    "stop_signals",
]
