"""Input checks and helpers shared by every loss (the loss contract of DESIGN.md).

``logits`` are ``N×C×S…`` (any number of spatial dims); a hard ``target`` is int64 ``N×S…`` whose
values lie in ``[0, C)`` or equal ``ignore_index``. ``C == 1`` means a binary problem (sigmoid of the
single channel; target in {0, 1, ignore}). Errors are ``ValueError`` naming the offending values.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from segloss.errors import LabelValueError

# Off the CPU, reading the check's result makes the host wait for the device. A loss checks the values of
# its first ACCELERATOR_CHECKS targets there (a wrong label mapping shows at once; the dataset loaders also
# check every mask as they read it), later ones not, so the training step has no host sync;
# SEGLOSS_CHECK_TARGETS=always checks every call.
ACCELERATOR_CHECKS = 20


class TargetChecks:
    """When a loss checks target values: every call on the CPU, its own first ``on_accelerator`` calls on an
    accelerator, never when ``enabled`` is false (a loss's ``check_values=False``). Each loss holds its own, so
    a second loss (or module) in the same process checks its first targets too."""

    def __init__(self, enabled: bool = True, on_accelerator: int = ACCELERATOR_CHECKS) -> None:
        self.enabled, self.left = bool(enabled), int(on_accelerator)

    def __bool__(self) -> bool:
        return self.enabled

    def __repr__(self) -> str:
        return f"TargetChecks(enabled={self.enabled}, left={self.left})"

    def due(self, target: Tensor) -> bool:
        """Whether this call checks the values of ``target`` (see the class)."""
        if not self.enabled:
            return False
        if target.device.type == "cpu" or os.environ.get("SEGLOSS_CHECK_TARGETS") == "always":
            return True
        if self.left > 0:
            self.left -= 1
            return True
        return False


def at_least_float32(x: Tensor) -> Tensor:
    """Upcast half/bfloat16 to float32 for reductions; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_hard_target(
    logits: Tensor, target: Tensor, ignore_index: int, check_values: bool | TargetChecks = True
) -> tuple[Tensor, Tensor]:
    """Validate shapes and dtypes (always) and target values: when ``check_values`` is a loss's
    :class:`TargetChecks`, as it says (on an accelerator each check is one host sync); ``True`` (a functional
    call) checks, ``False`` does not.

    Returns :func:`valid_mask`'s ``(valid, safe_target)`` so callers need not recompute them.
    """
    if logits.dim() < 3:
        raise ValueError(f"logits must be N×C×spatial…, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            f"target must be an integer class-index tensor (int64), got {target.dtype}; "
            "convert masks with .long() (soft targets are only accepted by soft-target losses)"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected {expected} (N×spatial, without the class dimension)"
        )
    valid, safe = valid_mask(target, ignore_index)
    due = check_values.due(target) if isinstance(check_values, TargetChecks) else bool(check_values)
    if due and target.numel():
        num_classes = max(logits.shape[1], 2)
        low, high = safe.aminmax()
        if bool((low < 0) | (high >= num_classes)):
            bad = (safe < 0) | (safe >= num_classes)
            values = torch.unique(target[bad]).tolist()[:10]
            raise LabelValueError(
                f"target holds values {values} outside [0, {num_classes}) that are not "
                f"ignore_index={ignore_index}; fix the label mapping or set ignore_index"
                + (
                    f" (data.ignore_index={values[0]} if that value marks the pixels to ignore)"
                    if len(values) == 1
                    else ""
                )
            )
    return valid, safe


def check_class_vector(name: str, vector: Tensor | None, num_classes: int, against: str = "") -> None:
    """A per-class vector (class weights, focal α) must have one entry per class: checked by the loss on its
    logits (C = ``num_classes``) and, earlier, by ``segloss.build`` against the config (``against`` then names
    ``data.num_classes``)."""
    if vector is not None and vector.numel() != num_classes:
        against = against or f"the logits have C={num_classes} classes"
        raise ValueError(f"{name} has {vector.numel()} entries but {against}; give one value per class")


def as_class_tensor(values) -> Tensor | None:
    """Convert a list/tuple/tensor (e.g. from a Hydra config) to a float32 tensor, None stays None."""
    if values is None:
        return None
    return torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.float32)


def valid_mask(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Return ``(valid, safe_target)``: a bool mask of non-ignored pixels and the target with ignored
    pixels replaced by 0, safe for gather/one_hot (their contribution must be masked by ``valid``)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))
