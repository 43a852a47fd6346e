"""Per-image, per-class TP / FP / FN of a split: what a loss comparison resamples and pairs.

For image i and class c (pixels whose target is ``ignore_index`` count nowhere):

    TP_ic = #{pred = c, target = c}    FP_ic = #{pred = c, target ≠ c}    FN_ic = #{pred ≠ c, target = c}

The split-level counts are their sums over images, so the split's IoU_c = ΣTP / Σ(TP + FP + FN) and its mIoU
(:mod:`segloss.metrics.confusion`) follow from these rows exactly, and so do those of any resample of the
images (:mod:`segloss.comparison.significance`). Recall, precision and Dice come from the same three counts.

Images are identified by their position in the split (``index``, which every evaluation batch carries:
:class:`segloss.data.sampling.IndexedItems`) and by name. The counts are a
``dist_reduce_fx="cat"`` list state (rows ``[index, TP_0.., FP_0.., FN_0..]``, int64, no host sync per
update); the names stay on the host of the rank that saw them and are gathered at ``compute()``.

``extras`` (name → (width, dtype)) adds further per-image arrays to each row: the quality metrics' counts
(:func:`segloss.metrics.quality.per_image_fields`). float64 arrays travel bit for bit as int64 (``view``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from segloss.metrics.confusion import count_bins
from segloss.metrics.rows import RowsMetric


class PerImageCounts(RowsMetric):
    """``update(preds N×H×W, target N×H×W, names, index N)``; ``compute()`` → ``{"index": int64 M,
    "names": [M], "tp"/"fp"/"fn": int64 M×C}`` sorted by index (CPU tensors)."""

    is_differentiable = False

    def __init__(
        self, num_classes: int, ignore_index: int = 255, extras: dict[str, tuple[int, torch.dtype]] | None = None,
        **kwargs,
    ) -> None:  # fmt: skip
        self.extras = dict(extras or {})
        super().__init__(1 + 3 * num_classes + sum(width for width, _ in self.extras.values()), **kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.named: list[tuple[Tensor, list[str]]] = []  # (index, names) of each batch this rank saw

    def reset(self) -> None:
        super().reset()
        self.named = []

    def update(
        self, preds: Tensor, target: Tensor, names: Sequence[str], index: Tensor,
        extras: dict[str, Tensor] | None = None,
    ) -> None:  # fmt: skip
        """Counts of N images whose positions in the split are ``index`` (N, the batch's ``"index"``), with their
        ``extras`` (name → N×width, every name of the constructor's)."""
        n, c = preds.shape[0], self.num_classes
        if not n:
            return
        image = torch.arange(n, device=preds.device).view(-1, *(1,) * (target.dim() - 1))  # 2D images or volumes
        valid = (target >= 0) & (target < c) & (preds >= 0) & (preds < c)
        flat = (image * c + target.long()) * c + preds.long()
        confusion = count_bins(torch.where(valid, flat, n * c * c).reshape(-1), n * c * c).view(n, c, c)
        tp = confusion.diagonal(dim1=1, dim2=2)
        fp, fn = confusion.sum(dim=1) - tp, confusion.sum(dim=2) - tp
        index = torch.as_tensor(index, dtype=torch.int64).to(preds.device).reshape(n)
        columns = [index[:, None], tp, fp, fn]
        for name, (width, dtype) in self.extras.items():
            if extras is None or name not in extras:
                raise ValueError(f"PerImageCounts.update: the per-image array {name!r} is missing")
            value = extras[name].to(device=preds.device, dtype=dtype).reshape(n, width)
            columns.append(value.view(torch.int64) if dtype == torch.float64 else value.long())
        self.rows.append(torch.cat(columns, dim=1))
        self.named.append((index, [str(name) for name in names]))  # read once, at compute (no sync per batch)

    def compute(self) -> dict:
        rows = self.all_rows()
        rows = rows[rows[:, 0].argsort()]
        positions = torch.cat([index.reshape(-1) for index, _ in self.named]).tolist() if self.named else []
        mine = dict(zip(positions, [name for _, batch in self.named for name in batch], strict=True))  # one sync
        names = dict(mine)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)
            for part in gathered:
                names.update(part)
        c = self.num_classes
        widths = [c, c, c, *(width for width, _ in self.extras.values())]
        tp, fp, fn, *extra = rows[:, 1:].split(widths, dim=1)
        out = {
            "index": rows[:, 0],
            "names": [names.get(i, "") for i in rows[:, 0].tolist()],
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
        for (name, (_, dtype)), value in zip(self.extras.items(), extra, strict=True):
            out[name] = value.contiguous().view(torch.float64) if dtype == torch.float64 else value
        return out


def save_per_image(path, counts: dict, class_names: Sequence[str], metric: str, value: float | None) -> None:
    """Write the per-image counts of a run's best validation (``per_image_val.npz``): arrays ``index``, ``names``,
    ``class_names``, ``tp``, ``fp``, ``fn``, the quality metrics' per-image arrays (``band_inter`` …, as
    :class:`PerImageCounts` has them) and the ``metric`` that chose that validation with its ``value``.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    from pathlib import Path

    path = Path(path)
    arrays = {k: v.numpy() for k, v in counts.items() if k not in ("index", "names") and hasattr(v, "numpy")}
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        np.savez_compressed(
            handle,
            index=counts["index"].numpy(),
            names=np.array(counts["names"], dtype=str),
            class_names=np.array(list(class_names), dtype=str),
            **arrays,
            metric=np.array(metric),
            value=np.array(np.nan if value is None else value),
        )
    partial.replace(path)
