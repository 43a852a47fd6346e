"""torchvision's segmentation nets (FCN, DeepLabV3, LR-ASPP) under the segloss net contract."""

from __future__ import annotations

from torch import Tensor, nn


class _OutOnly(nn.Module):
    """torchvision's segmentation models return ``{"out": logits, "aux": …}``; keep ``out``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)["out"]


def build_torchvision_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """``torchvision.models.segmentation.<name>`` with random weights (no download) and no aux head.

    ``name``: ``fcn_resnet50`` (Long et al. 2015, ResNet backbone), ``fcn_resnet101``,
    ``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``,
    ``lraspp_mobilenet_v3_large``. Logits are returned at input resolution.
    """
    from torchvision.models import segmentation

    builder = getattr(segmentation, name, None)
    if builder is None or not callable(builder) or not name.islower():
        known = [n for n in dir(segmentation) if n.islower() and not n.startswith("_") and "_" in n]
        raise ValueError(f"unknown torchvision segmentation model {name!r}; choose one of {known}")
    kwargs.setdefault("weights_backbone", None)
    if not name.startswith("lraspp"):
        kwargs.setdefault("aux_loss", False)
    return _OutOnly(builder(weights=None, num_classes=num_classes, **kwargs))
