"""Per-case (per-volume) Dice for 3D data, evaluated slice by slice or volume by volume.

``update(preds, target, cases)`` takes a batch of N items with one case id each: 2-D slices (N×H×W, the 2-D
MSD path, a case's slices spread over any batches and ranks) or whole volumes (N×D×H×W, one case each), or
any N×S… items. For case k and class c, TP/FP/FN are summed over every voxel of every item of the case, so

    Dice_{k,c} = 2·TP / (2·TP + FP + FN)

is exactly the Dice of the stacked 3D volume, whatever the order or batching of the slices, and a volume
scores what its D slices score (tested, and against MONAI's ``compute_dice``). Voxels whose target is
``ignore_index`` count nowhere (not even as a false positive of the predicted class).

Absent classes (nnU-Net convention, Isensee et al., Nature Methods 2021; the MSD evaluation, Antonelli et al.,
Nature Communications 2022, scores them separately): when class c is in neither the ground truth nor the prediction
of case k, 0/0 gives NaN and case k is left out of class c's mean; a class predicted but absent from the truth
scores 0 (MONAI's ``compute_dice`` gives NaN there with ``ignore_empty=True``, its default, and 0 with
``ignore_empty=False``, which scores the absent-from-both case 1 instead). ``"Dice"`` is the per-class nan-mean over
cases and ``"mDice"`` the nan-mean of ``"Dice"`` over classes, without the background class 0 unless
``include_background``. ``"dice_per_case"`` and ``"Dice"`` keep every class as a column (column c = class c) either
way.

Distributed reduction: torchmetrics can only all-gather tensors, and a case's slices may be spread over
several ranks. Each update appends rows ``[key, TP_0..TP_{C-1}, FP_0.., FN_0.., name bytes]`` (int64) to a
list state reduced with ``dist_reduce_fx="cat"`` (:class:`segloss.metrics.rows.RowsMetric`); ``compute()``
sums the rows by key. The key is a stable signed int64 of the case id (the first 8 bytes of its BLAKE2b
digest; Python's ``hash`` is salted per process, so ranks would disagree). The case id's first
``NAME_BYTES`` UTF-8 bytes travel in the row too, so a rank can name cases it never saw; a local key→name
table keeps full names of the cases seen here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from segloss.metrics.confusion import count_bins
from segloss.metrics.rows import RowsMetric

NAME_BYTES = 64  # stored as NAME_BYTES // 8 int64 columns


def case_key(case: str) -> int:
    """Stable signed int64 key of a case id: the first 8 bytes of BLAKE2b(case, UTF-8), little-endian."""
    return int.from_bytes(hashlib.blake2b(case.encode(), digest_size=8).digest(), "little", signed=True)


def encode_names(cases: Sequence[str]) -> Tensor:
    """The first NAME_BYTES UTF-8 bytes of each case id, zero-padded, viewed as int64 (len(cases), NAME_BYTES/8)."""
    raw = bytearray()
    for case in cases:
        raw += case.encode()[:NAME_BYTES].ljust(NAME_BYTES, b"\0")
    return torch.frombuffer(raw, dtype=torch.uint8).view(torch.int64).view(len(cases), NAME_BYTES // 8).clone()


def decode_name(columns: Tensor) -> str:
    """Inverse of :func:`encode_names` for one row (a name cut at NAME_BYTES bytes stays cut)."""
    raw = columns.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return raw.rstrip(b"\0").decode(errors="replace")


def counts_per_case(rows: Tensor, width: int, names: dict[int, str]) -> tuple[list[str], Tensor]:
    """The rows ``[case key, width counts…, encoded name]`` of a per-case metric summed per case: ``(case names,
    int64 K×width)`` in name order. A key is named by ``names`` (this process's) or by the name its first row
    carries (a row from another rank)."""
    keys, inverse = torch.unique(rows[:, 0], return_inverse=True)
    counts = torch.zeros(len(keys), width, dtype=torch.int64)
    counts.index_add_(0, inverse, rows[:, 1 : 1 + width])
    first = torch.full((len(keys),), len(rows), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows)), reduce="amin")
    found = [names[key] if key in names else decode_name(rows[row, -(NAME_BYTES // 8) :])
             for key, row in zip(keys.tolist(), first.tolist())]  # fmt: skip
    order = sorted(range(len(found)), key=found.__getitem__)
    return [found[i] for i in order], counts[order]


class CaseDice(RowsMetric):
    """Dice per case and class from slices or volumes: ``update(preds, target, cases)``, ``compute()`` → dict.

    Args:
        num_classes: C; predictions and non-ignored targets must lie in [0, C).
        ignore_index: target value that is excluded from every count.
        include_background: whether class 0 enters ``"mDice"``.

    ``compute()`` returns CPU tensors ``{"dice_per_case": float32 K×C (rows = cases sorted by id),
    "cases": [K ids], "Dice": float32 C (nan-mean over cases), "mDice": float32 scalar}`` (module docstring).
    """

    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255, include_background: bool = False, **kwargs) -> None:
        super().__init__(1 + 3 * num_classes + NAME_BYTES // 8, **kwargs)
        if num_classes < 1:
            raise ValueError(f"CaseDice needs num_classes >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a class id for num_classes={num_classes}")
        self.num_classes, self.ignore_index, self.include_background = num_classes, ignore_index, include_background
        self.names: dict[int, str] = {}  # local key -> full case id (display only; never reduced)

    def _key(self, case: str) -> int:
        key = case_key(case)
        if self.names.setdefault(key, case) != case:
            raise ValueError(f"case ids {self.names[key]!r} and {case!r} share the key {key}; rename one")
        return key

    def update(self, preds: Tensor, target: Tensor, cases: Sequence[str]) -> None:
        """Add the counts of N items: ``preds``/``target`` int64 N×H×W slices or N×D×H×W volumes (any N×S…),
        ``cases[i]`` = case id of item i."""
        if preds.shape != target.shape or preds.ndim < 3 or len(cases) != preds.shape[0]:
            raise ValueError(
                f"CaseDice.update needs preds and target of one shape N×H×W (slices) or N×D×H×W (volumes) and "
                f"N case ids; got "
                f"{tuple(preds.shape)}, {tuple(target.shape)} and {len(cases)} ids"
            )
        if not len(cases):
            return
        names = sorted(set(cases))
        local = {name: i for i, name in enumerate(names)}
        slice_case = torch.tensor([local[c] for c in cases], dtype=torch.int64, device=target.device)
        c = self.num_classes
        case_of_pixel = slice_case.view(-1, *(1,) * (target.ndim - 1)).expand_as(target)
        # One sync-free pass (see segloss.metrics.confusion.count_bins): pixels whose target is ignored, or whose
        # target or prediction is not a class, go to the spare bin.
        valid = (target >= 0) & (target < c) & (target != self.ignore_index) & (preds >= 0) & (preds < c)
        flat = (case_of_pixel * c + target.long()) * c + preds.long()
        confusion = count_bins(torch.where(valid, flat, len(names) * c * c).reshape(-1), len(names) * c * c)
        confusion = confusion.view(len(names), c, c)  # [case, target class, predicted class]
        tp = confusion.diagonal(dim1=1, dim2=2)
        fp, fn = confusion.sum(dim=1) - tp, confusion.sum(dim=2) - tp
        keys = torch.tensor([self._key(n) for n in names], dtype=torch.int64, device=tp.device)
        name_columns = encode_names(names).to(tp.device)
        self.rows.append(torch.cat([keys[:, None], tp, fp, fn, name_columns], dim=1))

    def compute(self) -> dict:
        # a few rows per case and update: reduce them on the CPU (no device syncs per case, no
        # non-deterministic CUDA index_add_/scatter under torch.use_deterministic_algorithms)
        cases, counts = counts_per_case(self.all_rows(), 3 * self.num_classes, self.names)
        tp, fp, fn = counts.double().split(self.num_classes, dim=1)
        dice = (2 * tp / (2 * tp + fp + fn)).float()  # 0/0 -> NaN: class absent from truth and prediction
        per_class = torch.nanmean(dice, dim=0) if cases else torch.full((self.num_classes,), float("nan"))
        scored = per_class if self.include_background else per_class[1:]
        return {
            "dice_per_case": dice,
            "cases": cases,
            "Dice": per_class,
            "mDice": torch.nanmean(scored),
        }
