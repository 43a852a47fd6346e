"""The best validation epoch by the run's one optimised metric (``optimized_metric`` in the config).

The same metric picks the checkpoint (``callbacks.model_checkpoint.monitor``), the epoch whose per-class
results are printed at the end, and the value ``segloss.train.main`` returns to a sweeper. Every metric it
may name is a validation *score* computed by the module over the whole split — higher is better. The
validation loss is not offered: losses of different runs are not comparable, and a loss study picks its
epochs by the scores it compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from segloss.errors import ConfigError
from segloss.utils.metric_registry import optimizable_metrics

__all__ = ["BestScore", "metric_value", "optimizable_metrics"]  # the names optimized_metric may take: the registry


def metric_value(results: dict, metric: str, class_names: Sequence[str]) -> Tensor | None:
    """The value of ``metric`` (``val/mIoU``, ``val/IoU/car`` …) in a results dict of the module, or
    None when the results do not hold it."""
    parts = metric.split("/", 2)
    if len(parts) == 2 and parts[1] in results:
        return results[parts[1]]
    if len(parts) == 3 and parts[1] in results and parts[2] in class_names:
        return results[parts[1]][list(class_names).index(parts[2])]
    return None


class BestScore:
    """Tracks the best value of ``metric`` over validations and the results of that validation.

    ``update(results)`` → whether this validation is the new best (a NaN value never is);
    ``state()``/``load(state)`` carry the best into checkpoints, so a resumed training goes on with it."""

    def __init__(self, metric: str, class_names: Sequence[str]) -> None:
        self.metric, self.class_names = metric, list(class_names)
        self.value: float | None = None
        self.results: dict[str, Tensor] | None = None

    def reset(self) -> None:
        self.value, self.results = None, None

    def update(self, results: dict) -> bool:
        value = metric_value(results, self.metric, self.class_names)
        if value is None:
            raise ConfigError(
                f"optimized_metric={self.metric} is not among this run's validation results; choose one of "
                f"{optimizable_metrics(self.class_names, 'case_mDice' in results)[:8]} …"
            )
        value = float(value)
        if math.isnan(value) or (self.value is not None and value <= self.value):
            return False
        self.value = value
        self.results = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in results.items()}
        return True

    def tensor(self, device=None) -> Tensor:
        return torch.tensor(math.nan if self.value is None else self.value, device=device)

    def state(self) -> dict | None:
        if self.value is None:
            return None
        return {"metric": self.metric, "value": self.value, "results": self.results}

    def load(self, state: dict | None) -> None:
        """Take the best of a checkpoint — only when it was chosen by the same metric."""
        self.reset()
        if not state:
            return
        metric = state.get("metric", "val/mIoU")  # checkpoints before optimized_metric tracked val/mIoU
        if metric == self.metric:
            self.value = float(state["value"] if "value" in state else state["mIoU"])
            self.results = state.get("results")
