"""Learning-rate schedules stepped per optimizer step, with an optional linear warm-up.

Each factory takes ``total_steps`` (the module passes ``trainer.estimated_stepping_batches``), so the
same config serves epoch- and iteration-based training. torch's ``PolynomialLR`` has no warm-up and
names its length differently from ``CosineAnnealingLR``; these keep one signature.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """DeepLab's "poly" policy: lr = base · ((1 − t/T)^power · (1 − m) + m), t the step, T = total_steps."""

    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return _warmup(step, warmup_steps) * ((1 - progress) ** power * (1 - min_lr_ratio) + min_lr_ratio)

    return LambdaLR(optimizer, factor)


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """Cosine decay (Loshchilov & Hutter 2017, no restarts): lr = base · (m + (1 − m)(1 + cos(π t/T))/2)."""

    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return _warmup(step, warmup_steps) * (
            min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    return LambdaLR(optimizer, factor)
