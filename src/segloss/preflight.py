"""Checks that stop a misconfigured run before it starts, each with one message naming the fix."""

from __future__ import annotations

import torch
from torch import nn

from segloss.errors import ConfigError

FLOAT16 = ("16-mixed", "16-true", "16")
BFLOAT16 = ("bf16-mixed", "bf16-true", "bf16")
PRECISIONS = ("32-true", "32", "64-true", "64", *FLOAT16, *BFLOAT16)


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_precision(trainer_cfg) -> None:
    """``trainer.precision`` must be one Lightning knows and that the device runs: float16 needs a CUDA
    GPU (Lightning would silently switch a CPU run to bf16), bfloat16 a GPU that has it (Ampere or later)."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not one of {list(PRECISIONS)}")
    cuda = _uses_cuda(accelerator)
    if precision in FLOAT16 and not cuda:
        raise ConfigError(
            f"trainer.precision={precision} (float16) needs a CUDA GPU, but this run uses the CPU "
            f"(trainer.accelerator={accelerator}); use trainer.precision=bf16-mixed or 32-true"
        )
    if precision in BFLOAT16 and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no bfloat16; "
            "use trainer.precision=16-mixed or 32-true"
        )


def check_class_vectors(loss: nn.Module, num_classes: int) -> None:
    """Per-class vectors of a loss (class weights, focal α, …) must have ``num_classes`` entries."""
    for name, module in loss.named_modules():
        for attr in ("weight", "alpha", "class_weight"):
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() not in (1, num_classes):
                where = f"loss.{name + '.' if name else ''}{attr}"
                raise ConfigError(
                    f"{where} has {value.numel()} entries but data.num_classes={num_classes}; give one value per "
                    "class, or a method name such as weight=median_frequency"
                )
