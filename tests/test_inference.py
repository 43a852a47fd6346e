"""Sliding-window inference: equals whole-image inference when one window covers the image, covers
every pixel otherwise, and averages logits where windows overlap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segloss.errors import ConfigError
from segloss.models.inference import Inference, slide_inference, window_origins


class PixelNet(nn.Module):
    """A per-pixel net (1×1 convs): its output at a pixel does not depend on the window around it."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return self.body(x)


class CountingNet(nn.Module):
    """Outputs ones: the averaged logits are 1 wherever a window has been."""

    def forward(self, x):
        return torch.ones(x.shape[0], 2, *x.shape[-2:])


def test_window_origins_follow_the_mmseg_rule():
    # Cityscapes: 1024×2048 frame, 512×1024 windows, stride 341×683 → 3 × 3 windows ending at the border.
    assert window_origins(1024, 512, 341) == [0, 341, 512]
    assert window_origins(2048, 1024, 683) == [0, 683, 1024]
    assert window_origins(100, 100, 30) == [0]
    assert window_origins(80, 100, 30) == [0]  # smaller than the window: inferred whole
    assert window_origins(101, 50, 50) == [0, 50, 51]


def test_one_window_covering_the_image_equals_whole_inference():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    image = torch.randn(2, 3, 24, 40)
    whole = Inference("whole")(net, image)
    slide = Inference("slide", crop_size=(24, 40), stride=(8, 8))(net, image)
    bigger = Inference("slide", crop_size=(32, 64), stride=(16, 32))(net, image)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)
    torch.testing.assert_close(bigger, whole, rtol=0, atol=0)


def test_overlapping_windows_cover_every_pixel_and_average_logits():
    image = torch.randn(1, 3, 37, 53)
    ones = slide_inference(CountingNet(), image, (16, 20), (7, 9))
    assert torch.equal(ones, torch.ones_like(ones))  # every pixel predicted, average of ones is one
    net = PixelNet()
    torch.testing.assert_close(slide_inference(net, image, (16, 20), (7, 9)), net(image), rtol=1e-5, atol=1e-6)


def test_logits_not_probabilities_are_averaged():
    calls = iter([torch.full((1, 2, 4, 4), 3.0), torch.full((1, 2, 4, 4), -1.0)])
    out = slide_inference(lambda x: next(calls), torch.zeros(1, 3, 4, 6), (4, 4), (2, 2))
    assert out[0, 0, 0, 0] == 3.0 and out[0, 0, 0, 5] == -1.0
    assert out[0, 0, 0, 2] == 1.0  # (3 + (−1)) / 2 in the overlap


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "sliding"}, "inference.mode='sliding'"),
        ({"mode": "slide"}, "inference.crop_size"),
        ({"mode": "slide", "crop_size": [8, 8], "stride": [16, 4]}, "larger than inference.crop_size"),
    ],
)
def test_bad_inference_settings_are_named(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        Inference(**kwargs)


@pytest.mark.parametrize("window_batch", [2, 4, 9, 20])
def test_windows_in_batches_give_the_logits_of_one_window_at_a_time(window_batch):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
    net.eval()
    image = torch.randn(2, 3, 30, 50)
    calls = []

    def forward(x):
        calls.append(x.shape[0])
        return net(x)

    one = slide_inference(net, image, (16, 20), (7, 9))  # 3 × 5 = 15 windows, one per call
    batched = slide_inference(forward, image, (16, 20), (7, 9), window_batch=window_batch)
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-6)
    assert len(calls) == -(-15 // window_batch) and sum(calls) == 15 * 2  # ⌈15/k⌉ calls of up to k·N crops
    assert Inference("slide", crop_size=(16, 20), stride=(7, 9), window_batch=window_batch).window_batch == window_batch


def test_a_window_batch_that_is_not_a_positive_count():
    with pytest.raises(ConfigError, match=r"inference.window_batch=0: give a positive number of windows per call"):
        Inference("slide", crop_size=(8, 8), stride=(4, 4), window_batch=0)


@pytest.mark.parametrize(("size", "crop", "stride", "window_batch"), [
    ((37, 53), (16, 16), (8, 8), 1), ((37, 53), (16, 20), (7, 9), 3), ((10, 12), (16, 16), (8, 8), 2),
    ((33, 70), (16, 16), (16, 16), 4), ((64, 20), (12, 20), (5, 20), 1),
])  # fmt: skip
def test_streamed_classes_equal_the_argmax_of_the_whole_slide(size, crop, stride, window_batch):
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, 3, padding=1)
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = slide_inference(net, image, crop, stride, window_batch).argmax(1)
        got = Inference("slide", crop, stride, window_batch).classes(net, image, lambda z: z.argmax(1))
    assert torch.equal(got, expected)


def test_make_predict_on_a_tall_image_never_holds_the_whole_image_s_logits(monkeypatch):
    """An 8000×8000 frame with inference=slide took more memory than whole-image inference: the logits of
    every pixel (4.9 GB at 19 classes) were accumulated before the argmax. Now one band of windows at a time."""
    from segloss.models.inference import predict_indices

    class Module(nn.Module):  # what predict_indices needs of a SegmentationModule
        def __init__(self) -> None:
            super().__init__()
            self.net, self.inference = nn.Conv2d(3, 7, 3, padding=1), Inference("slide", (32, 32), (24, 24))

        def forward(self, x):
            return self.net(x)

        def to_classes(self, logits):
            return logits.argmax(1)

    torch.manual_seed(0)
    module = Module()
    image = torch.randint(0, 256, (3, 400, 96), dtype=torch.uint8)
    allocated = []
    real = torch.Tensor.new_zeros

    def recording(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        allocated.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "new_zeros", recording)
    classes = predict_indices(module, lambda item: {**item, "image": item["image"].float() / 255}, image,
                              torch.device("cpu"))  # fmt: skip
    monkeypatch.undo()
    with torch.no_grad():
        expected = slide_inference(module, image.float().unsqueeze(0) / 255, (32, 32), (24, 24)).argmax(1)[0]
    assert (classes == expected.numpy()).all()
    whole = 7 * 400 * 96
    assert allocated and max(allocated) <= 7 * 32 * 96 < whole / 10  # one 32-row band, not 400 rows
