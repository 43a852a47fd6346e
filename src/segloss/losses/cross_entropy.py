"""Cross-entropy with class weights and ``ignore_index``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segloss.losses._checks import (
    TargetChecks,
    as_class_tensor,
    at_least_float32,
    check_class_vector,
    check_hard_target,
)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
    check_values: bool = True,
) -> Tensor:
    """Weighted mean cross-entropy over the non-ignored pixels V.

    L = Σ_{i∈V} w_{t_i} ℓ_i / Σ_{i∈V} w_{t_i},  ℓ_i = −log softmax(z_i)_{t_i}
    (with label smoothing ε: ℓ_i = −(1−ε) log p_{t_i} − ε/C Σ_c w_c/w_{t_i} log p_c, as torch does).

    Identical to ``torch.nn.functional.cross_entropy(reduction="mean")`` except that a batch whose
    pixels are all ignored gives 0 (and a zero gradient) instead of nan. Computed in float32.
    """
    valid, _ = check_hard_target(logits, target, ignore_index, check_values)
    check_class_vector("weight", weight, logits.shape[1])
    logits = at_least_float32(logits)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    mean = F.cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction="mean", label_smoothing=label_smoothing
    )
    # torch gives 0/0 = nan (with a zero gradient) when every pixel is ignored; NaN logits stay NaN
    return torch.where(valid.any(), mean, torch.zeros_like(mean))


class CrossEntropyLoss(nn.Module):
    """Cross-entropy for C ≥ 2 classes: L = Σ_V w_t·(−log p_t) / Σ_V w_t (see :func:`cross_entropy`).

    Args:
        weight: optional per-class weights (length C), e.g. median-frequency weights.
        ignore_index: label value that counts nowhere (Cityscapes/VOC use 255).
        label_smoothing: ε of Szegedy et al. 2016, as in ``torch.nn.CrossEntropyLoss``.
        check_values: verify target values (one host sync per call); switch off for speed.
    """

    def __init__(
        self,
        weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", as_class_tensor(weight), persistent=False)
        self.ignore_index, self.label_smoothing, self.check_values = (
            ignore_index,
            label_smoothing,
            TargetChecks(check_values),
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(logits, target, self.weight, self.ignore_index, self.label_smoothing, self.check_values)


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy on one logit channel (C = 1), mean over non-ignored pixels:
    L = mean_V −[w₊ y log σ(z) + (1 − y) log(1 − σ(z))], with ``pos_weight`` w₊ (torch's convention).
    Target values are 0, 1 or ``ignore_index``.
    """

    def __init__(self, pos_weight: float | None = None, ignore_index: int = 255, check_values: bool = True) -> None:
        super().__init__()
        self.pos_weight, self.ignore_index = pos_weight, ignore_index
        self.check_values = TargetChecks(check_values)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"BinaryCrossEntropyLoss needs C = 1 logit channel, got C = {logits.shape[1]}")
        valid, safe = check_hard_target(logits, target, self.ignore_index, self.check_values)
        z = at_least_float32(logits)[:, 0]
        pos_weight = (
            None if self.pos_weight is None else torch.tensor(float(self.pos_weight), device=z.device, dtype=z.dtype)
        )
        bce = F.binary_cross_entropy_with_logits(z, safe.to(z.dtype), pos_weight=pos_weight, reduction="none")
        return (bce * valid).sum() / valid.sum().clamp_min(1)
