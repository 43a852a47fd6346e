"""Every loss preset of configs/loss built from its YAML, and example inputs of the right kind for it."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from segloss.utils.config import CONFIG_DIR
from segloss.utils.loss_family import without_family

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml") if "_target_" in OmegaConf.load(p))


BINARY = ("bce", "bce_dice")  # one sigmoid channel: C = 1 logits, 0/1 targets


def example_inputs(name: str, size=(24, 40), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target (top rows ignored) that preset ``name`` takes: 19 classes, or 1 channel for BINARY."""
    g = torch.Generator().manual_seed(seed)
    channels, classes = (1, 2) if name in BINARY else (19, 19)
    logits = torch.randn(2, channels, *size, generator=g)
    target = torch.randint(0, classes, (2, *size), generator=g)
    target[:, : max(1, size[0] // 8)] = 255
    return logits, target


def preset_loss(name: str):
    node = OmegaConf.merge({"data": {"ignore_index": 255, "num_classes": 19}}, {"loss": OmegaConf.load(
        Path(CONFIG_DIR) / "loss" / f"{name}.yaml")})  # fmt: skip
    return hydra.utils.instantiate(without_family(node.loss))
