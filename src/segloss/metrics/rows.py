"""A torchmetrics ``Metric`` whose state is a list of fixed-width int64 rows, concatenated over ranks.

torchmetrics can only all-gather tensors, so per-image and per-case records travel as rows
(``dist_reduce_fx="cat"``). The list always holds an empty (0, width) int64 tensor, so a rank that saw no image
still contributes a well-typed tensor to the all-gather (torchmetrics would otherwise send a float placeholder).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class RowsMetric(Metric):
    full_state_update = False
    rows: list[Tensor]

    def __init__(self, width: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.rows.append(self._no_rows())

    def _no_rows(self) -> Tensor:
        return torch.zeros(0, self.width, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        super().reset()
        self.rows.append(self._no_rows())

    def all_rows(self) -> Tensor:
        """Every row (of every rank, after ``compute``'s sync), on the CPU."""
        return dim_zero_cat(self.rows).view(-1, self.width).cpu()
