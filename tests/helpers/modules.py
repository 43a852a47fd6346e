"""A small SegmentationModule built by hand (no config), for tests of the module's own behaviour."""

from __future__ import annotations

import torch

from segloss.losses import CrossEntropyLoss
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet


def plain_module() -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(net=UNet(num_classes=3, base_channels=4, depth=2), loss=CrossEntropyLoss(),
                              optimizer=None, num_classes=3)  # fmt: skip
