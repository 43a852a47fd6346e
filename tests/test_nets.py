import pytest
import torch

from segloss.models.nets.smp_factory import build_smp_model
from segloss.models.nets.torchvision_nets import build_torchvision_model
from segloss.models.nets.unet import UNet


@pytest.mark.parametrize("size", [(32, 64), (37, 53), (1, 17)])
def test_unet_logits_at_input_resolution(size):
    net = UNet(num_classes=5, base_channels=4, depth=3).eval()
    assert net(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_unet_paper_widths_and_grad():
    net = UNet(num_classes=2, base_channels=64, depth=4)
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == 1024 and widths[0] == 64  # 64-128-256-512-1024 as in the paper
    small = UNet(num_classes=3, base_channels=4, depth=2)
    x = torch.randn(2, 3, 20, 20, requires_grad=True)
    small(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus", "PSPNet"])
def test_smp_factory_builds_offline_at_any_size(arch):
    net = build_smp_model(arch, num_classes=7, encoder_name="resnet18").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 70, 100)).shape == (1, 7, 70, 100)


def test_smp_unknown_architecture_lists_choices():
    with pytest.raises(ValueError, match="DeepLabV3Plus"):
        build_smp_model("Unett", num_classes=3)


def test_torchvision_fcn():
    net = build_torchvision_model("fcn_resnet50", num_classes=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 33, 45)).shape == (1, 4, 33, 45)
    with pytest.raises(ValueError, match="fcn_resnet50"):
        build_torchvision_model("fcn_nope", num_classes=4)
