"""Lovász-Softmax and Lovász hinge (Berman, Rannen Triki & Blaschko, CVPR 2018).

The Lovász extension of the Jaccard loss ΔJ: for errors e sorted in decreasing order with their
ground-truth indicators g, the loss is ⟨e_sorted, ∇⟩ where ∇_1 = J_1 and ∇_k = J_k − J_{k−1},
J_k = 1 − (Σg − cumsum(g)_k) / (Σg + cumsum(1 − g)_k).

Vectorised: every (image, class) row is sorted in one ``torch.sort`` call, with no Python loop over
classes or images. Ignored pixels are given an error below every real one, so they sort last,
and their indicator is 0: they change neither the sorted order, nor J, nor the dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segloss.losses._checks import at_least_float32, check_hard_target, valid_mask
from segloss.losses._region import CLASS_MODES, class_mean, class_probabilities


def lovasz_gradient(fg_sorted: Tensor) -> Tensor:
    """∇ of the Lovász extension of the Jaccard loss along the last dim (rows sorted by error)."""
    total = fg_sorted.sum(-1, keepdim=True)
    inter = total - fg_sorted.cumsum(-1)
    union = total + (1 - fg_sorted).cumsum(-1)
    jaccard = 1 - inter / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _rows(x: Tensor, per_image: bool) -> Tensor:
    """Rows to sort: (N, [C,] S) as is per image, or all images joined, (1, [C,] N·S), for batch statistics."""
    if per_image:
        return x
    if x.dim() == 3:
        return x.transpose(0, 1).reshape(1, x.shape[1], -1)
    return x.reshape(1, -1)


class LovaszSoftmaxLoss(torch.nn.Module):
    """Lovász-Softmax: per counted class c, errors |y_c − p_c| over V sorted in decreasing order,
    dotted with the Lovász gradient; mean over the counted classes (and over images when
    ``per_image``). ``classes="present"`` (default, as the paper) counts the classes present in the
    ground truth; 0 when none is. For C = 1 the two classes are background 1 − p and foreground p.

    The authors advise combining it with cross-entropy or fine-tuning after CE (see ``ce_lovasz``).
    """

    def __init__(
        self, per_image: bool = False, classes: str = "present", ignore_index: int = 255, check_values: bool = True
    ) -> None:
        super().__init__()
        if classes not in CLASS_MODES:
            raise ValueError(f"classes={classes!r}: choose one of {CLASS_MODES}")
        self.per_image, self.classes = per_image, classes
        self.ignore_index, self.check_values = ignore_index, check_values

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        check_hard_target(logits, target, self.ignore_index, self.check_values)
        probs = class_probabilities(logits)
        if probs.shape[1] == 1:
            probs = torch.cat([1 - probs, probs], dim=1)
        n, c = probs.shape[:2]
        valid, safe = valid_mask(target, self.ignore_index)
        p = _rows(probs.reshape(n, c, -1), self.per_image)
        v = _rows(valid.reshape(n, -1), self.per_image).unsqueeze(1)
        t = _rows(safe.reshape(n, -1), self.per_image).unsqueeze(1)
        fg = (t == torch.arange(c, device=t.device).view(1, c, 1)) & v
        errors = torch.where(v, (fg.to(p.dtype) - p).abs(), torch.full_like(p, -1.0))
        errors_sorted, order = errors.sort(dim=-1, descending=True)
        grad = lovasz_gradient(fg.to(p.dtype).gather(-1, order))
        per_class = (errors_sorted.clamp_min(0) * grad).sum(-1)
        return class_mean(per_class, fg.sum(-1), v.squeeze(1).any(-1), self.classes)


class LovaszHingeLoss(torch.nn.Module):
    """Lovász hinge for binary segmentation (C = 1): errors 1 − z·(2y − 1) on the logit z, the
    Lovász extension of the foreground Jaccard loss applied to relu(errors). ``per_image=True`` by
    default (as the paper); the image mean counts images with non-ignored pixels."""

    def __init__(self, per_image: bool = True, ignore_index: int = 255, check_values: bool = True) -> None:
        super().__init__()
        self.per_image, self.ignore_index, self.check_values = per_image, ignore_index, check_values

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"LovaszHingeLoss is binary: logits need C = 1 channel, got C = {logits.shape[1]}")
        check_hard_target(logits, target, self.ignore_index, self.check_values)
        n = logits.shape[0]
        valid, safe = valid_mask(target, self.ignore_index)
        z = _rows(at_least_float32(logits).reshape(n, -1), self.per_image)
        v = _rows(valid.reshape(n, -1), self.per_image)
        fg = (_rows(safe.reshape(n, -1), self.per_image) == 1) & v
        errors = torch.where(v, 1 - z * (2 * fg.to(z.dtype) - 1), torch.full_like(z, torch.finfo(z.dtype).min))
        errors_sorted, order = errors.sort(dim=-1, descending=True)
        per_row = (F.relu(errors_sorted) * lovasz_gradient(fg.to(z.dtype).gather(-1, order))).sum(-1)
        counted = v.any(-1).to(per_row.dtype)
        return (per_row * counted).sum() / counted.sum().clamp_min(1.0)
