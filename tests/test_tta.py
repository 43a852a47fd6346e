"""Test-time augmentation (issue 27, part 2): each view's logits back at the original size, averaged — equal to a
per-view reference, composable with sliding windows, the two views of a scale in one batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segloss.errors import ConfigError
from segloss.models.inference import Inference


class Counted(nn.Module):
    """A small non-equivariant conv net (a flip changes its output) that counts its calls and batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, (1, 3), padding=(0, 1)))
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x) + torch.linspace(0, 1, x.shape[-1])  # position-dependent: views really differ


def reference(net: nn.Module, image: torch.Tensor, scales, flip: bool) -> torch.Tensor:
    """One view at a time, written out: resize, (flip), forward, (flip back), resize back; the mean."""
    h, w = image.shape[-2:]
    views = []
    for s in scales:
        x = image if s == 1 else F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear")
        for flipped in (False, True) if flip else (False,):
            out = net(x.flip(-1)).flip(-1) if flipped else net(x)
            views.append(out if s == 1 else F.interpolate(out, size=(h, w), mode="bilinear"))
    return torch.stack(views).mean(0)


@pytest.mark.parametrize(("scales", "flip"), [([1.0], True), ([0.5, 1.0, 1.5], False), ([0.75, 1.25], True)])
def test_tta_equals_the_average_of_each_view_at_the_original_size(scales, flip):
    net, image = Counted().eval(), torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        got = Inference(tta={"scales": scales, "flip": flip})(net, image)
        net.batches.clear()
        Inference(tta={"scales": scales, "flip": flip})(net, image)
        want = reference(net, image, scales, flip)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert net.batches[: len(scales)] == [4 if flip else 2] * len(scales)  # a scale's two views in one batch


def test_tta_composes_with_sliding_windows_and_classes_follow_the_averaged_logits():
    net, image = Counted().eval(), torch.randn(1, 3, 16, 24)
    slide = {"mode": "slide", "crop_size": [8, 12], "stride": [6, 9]}
    with torch.no_grad():
        got = Inference(**slide, tta=True)(net, image)
        plain = Inference(**slide)
        want = (plain(net, image) + plain(net, image.flip(-1)).flip(-1)) / 2
        classes = Inference(**slide, tta=True).classes(net, image, lambda z: z.argmax(1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(classes, got.argmax(1))
    assert not torch.allclose(got, plain(net, image))  # the flip view changed something


def test_tta_settings_are_checked_and_volumes_refused():
    assert Inference(tta=None).tta is None and Inference(tta=True).tta == ((1.0,), True)
    with pytest.raises(ConfigError, match=r"inference.tta.scales=\[0, 1\] must be a list of positive factors"):
        Inference(tta={"scales": [0, 1]})
    with pytest.raises(ConfigError, match=r"inference.tta=.* must be null, true or \{scales"):
        Inference(tta={"scale": [1.0]})
    with pytest.raises(ConfigError, match=r"inference.tta resizes and flips 2D images"):
        Inference(mode="gaussian", patch_size=[8, 16, 16], tta=True)


def test_inference_tta_from_the_command_line_composes(make_cfg):
    from segloss.build import build_module

    cfg = make_cfg(["inference.tta={scales:[0.5,1.0],flip:true}"])
    module = build_module(cfg, with_optimizer=False)
    assert module.inference.tta == ((0.5, 1.0), True)
