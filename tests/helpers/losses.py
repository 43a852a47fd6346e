"""Every loss preset of configs/loss built from its YAML, and example inputs of the right kind for it."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from segloss.losses import wants_image
from segloss.utils.config import CONFIG_DIR
from segloss.utils.loss_family import without_family

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml") if "_target_" in OmegaConf.load(p))


BINARY = ("bce", "bce_dice")  # one sigmoid channel: C = 1 logits, 0/1 targets
MULTI_HOT = ("dice_bce_regions",)  # one sigmoid per region: N×3×S… logits, N×3×S… 0/1 targets (255 ignored)


def example_inputs(name: str, size=(24, 40), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target (top rows ignored) that preset ``name`` takes: 19 classes, 1 channel for BINARY, or
    3 region channels with a multi-hot target for MULTI_HOT."""
    g = torch.Generator().manual_seed(seed)
    if name in MULTI_HOT:
        logits = torch.randn(2, 3, *size, generator=g)
        target = torch.randint(0, 2, (2, 3, *size), generator=g)
        target[:, :, : max(1, size[0] // 8)] = 255
        return logits, target
    channels, classes = (1, 2) if name in BINARY else (19, 19)
    logits = torch.randn(2, channels, *size, generator=g)
    target = torch.randint(0, classes, (2, *size), generator=g)
    target[:, : max(1, size[0] // 8)] = 255
    return logits, target


def apply_loss(loss, logits: torch.Tensor, target: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``loss(logits, target)``, with a seeded RGB image of the logits' size (N×3×S…, values in [0, 255]) for a
    loss that needs the batch's image (the CRF loss: ``segloss.losses.wants_image``)."""
    if not wants_image(loss):
        return loss(logits, target)
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(logits.shape[0], 3, *logits.shape[2:], generator=g) * 255
    return loss(logits, target, image=image.to(logits.device))


def preset_loss(name: str):
    node = OmegaConf.merge({"data": {"ignore_index": 255, "num_classes": 19}}, {"loss": OmegaConf.load(
        Path(CONFIG_DIR) / "loss" / f"{name}.yaml")})  # fmt: skip
    return hydra.utils.instantiate(without_family(node.loss))
