"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), softmax form."""

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


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | float | None = None,
    ignore_index: int = 255,
    check_values: bool = True,
) -> Tensor:
    """Mean over the non-ignored pixels V of −α_t (1 − p_t)^γ log p_t.

    * C ≥ 2: p = softmax over the classes (the multi-class generalisation of the paper; *not*
      one-vs-rest sigmoids as smp's multiclass mode does), α an optional per-class vector.
    * C = 1: p = sigmoid(z) is the foreground probability, p_t = p for y = 1 and 1 − p for y = 0,
      α_t = α for foreground and 1 − α for background (the paper's binary form), α a float.

    The mean divides by |V| (not by Σ α_t, and not by N·C·S as MONAI does). γ = 0 with α = None
    equals cross-entropy exactly. 1 − p_t is computed as −expm1(log p_t) to keep precision near
    p_t = 1, and floored at the smallest normal float so that γ < 1 has a finite gradient there.
    Computed in float32; an all-ignored batch gives 0.
    """
    valid, safe = check_hard_target(logits, target, ignore_index, check_values)
    logits = at_least_float32(logits)
    if logits.shape[1] == 1:
        if isinstance(alpha, Tensor) and alpha.numel() != 1:
            raise ValueError(f"alpha for a binary (C = 1) focal loss is one float, got {alpha.numel()} values")
        sign = safe.float() * 2 - 1
        log_pt = -F.softplus(-sign * logits[:, 0])
        alpha_t = None if alpha is None else torch.where(safe == 1, float(alpha), 1.0 - float(alpha))
    else:
        if isinstance(alpha, (int, float)):
            raise ValueError(f"alpha={alpha} is a scalar but C={logits.shape[1]}: give one α per class")
        check_class_vector("alpha", alpha, logits.shape[1])
        log_pt = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        alpha_t = None if alpha is None else alpha.to(logits.device, logits.dtype)[safe]
    # 1 − p_t, kept ≥ the smallest normal float: at p_t = 1 the factor is ~0 either way, and for
    # γ < 1 the slope of x^γ at 0 would otherwise be infinite (a NaN gradient)
    gap = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -torch.pow(gap, gamma) * log_pt
    if alpha_t is not None:
        loss = loss * alpha_t
    valid = valid.float()
    return (loss * valid).sum() / valid.sum().clamp_min(1.0)


class FocalLoss(nn.Module):
    """Focal loss −α_t (1 − p_t)^γ log p_t, mean over non-ignored pixels (see :func:`focal_loss`).

    Args:
        gamma: focusing parameter γ ≥ 0; the paper's default 2.0.
        alpha: per-class weights (C ≥ 2) or the foreground weight (C = 1); None for no weighting.
        ignore_index: label value that counts nowhere.
        check_values: verify target values (one host sync per call).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | float | None = None,
        ignore_index: int = 255,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be ≥ 0, got {gamma}")
        self.gamma, self.ignore_index = gamma, ignore_index
        self.check_values = TargetChecks(check_values)
        self.alpha_scalar = float(alpha) if isinstance(alpha, (int, float)) else None
        vector = None if alpha is None or self.alpha_scalar is not None else as_class_tensor(alpha)
        self.register_buffer("alpha", vector, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        alpha = self.alpha_scalar if self.alpha_scalar is not None else self.alpha
        return focal_loss(logits, target, self.gamma, alpha, self.ignore_index, self.check_values)
