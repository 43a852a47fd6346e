"""The fast-path switches: device-side normalisation, torch.compile, training metrics off; benchmark smoke runs."""

from __future__ import annotations

import json

import pytest
import torch

from segloss.data.transforms import eval_transform, train_transform
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet
from tests.conftest import load_benchmark


def _module(**kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    net = UNet(num_classes=3, base_channels=4, depth=2)
    return SegmentationModule(net=net, loss=torch.nn.CrossEntropyLoss(), optimizer=None, num_classes=3, **kwargs)


def test_normalising_on_the_device_gives_the_same_logits_as_on_the_cpu():
    image = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    mask = torch.zeros(16, 24, dtype=torch.int64)
    on_cpu = eval_transform()({"image": image, "mask": mask})["image"]
    raw = eval_transform(normalize_on_device=True)({"image": image, "mask": mask})["image"]
    assert on_cpu.dtype == torch.float32 and raw.dtype == torch.uint8 and torch.equal(raw, image)
    module = _module().eval()
    with torch.no_grad():
        assert torch.allclose(module(raw[None]), module(on_cpu[None]), atol=1e-6)


def test_training_crops_leave_the_workers_as_uint8_within_half_a_grey_level():
    args = {"crop_size": (16, 16), "base_size": (16, 24), "color_jitter": (0.3, 0.3, 0.3, 0.05)}
    sample = {"image": torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8), "mask": torch.zeros(16, 24).long()}
    torch.manual_seed(3)
    floats = train_transform(**args)(dict(sample))["image"]
    torch.manual_seed(3)
    raw = train_transform(**args, normalize_on_device=True)(dict(sample))["image"]
    assert raw.dtype == torch.uint8
    module = _module()
    on_device = torch.addcmul(module.input_shift, raw[None].float(), module.input_scale)[0]
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert ((on_device - floats).abs() * std * 255).max() <= 0.5 + 1e-3  # rounding to the nearest grey level


def test_compile_keeps_the_checkpoint_keys_and_train_metrics_can_be_off(monkeypatch):
    compiled_nets, compile_in_place = [], torch.nn.Module.compile

    def recording(self, *args, **kwargs):
        compiled_nets.append(type(self).__name__)
        return compile_in_place(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", recording)
    plain, compiled = _module(), _module(compile=True)
    assert compiled_nets == ["UNet"]  # the net, in place, once; not the module, not without compile=True
    assert list(plain.state_dict()) == list(compiled.state_dict())
    module = _module(train_metrics=False)
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8))}
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # outside a Trainer
    losses = [module.training_step(batch, 0).item(), module.training_step(batch, 1).item()]
    assert module.train_metrics.confmat.sum() == 0 and set(logged) == {"train/loss_step"}
    module.on_train_epoch_end()  # the epoch's loss: the batch-size-weighted mean of the steps'
    assert logged["train/loss_epoch"] == pytest.approx(sum(losses) / 2)


def _bench(script: str, *args: str, tmp_path) -> dict:
    """``benchmarks/<script>.py args`` through its ``main(argv)``, in this process (no interpreter start-up);
    the JSON file it writes, as read back."""
    out = tmp_path / f"{script}.json"
    load_benchmark(script).main([*args, "--json", str(out)])
    return json.loads(out.read_text())


def test_metric_benchmark_runs_and_our_update_has_no_mask_indexing(tmp_path):
    result = _bench("bench_metrics", "--size", "2", "19", "64", "128", "--repeats", "3", tmp_path=tmp_path)
    assert {"segloss", "torchmetrics Jaccard", "torchmetrics Jaccard + Accuracy"} < set(result["median_ms"])
    assert len(result["median_ms"]) == 6  # + Boundary IoU, calibration, small-object recall
    assert result["syncing_ops"]["segloss"] == ["aten::bincount"]  # the CPU counter; histc on GPUs
    assert "aten::index" in result["syncing_ops"]["torchmetrics Jaccard"]
    assert all(0 < ms < 60_000 for ms in result["median_ms"].values())  # a time of its run, not a placeholder
    ref = result["median_ms"]["torchmetrics Jaccard"]
    assert result["ratio_to_jaccard"] == pytest.approx({k: ms / ref for k, ms in result["median_ms"].items()})


@pytest.mark.slow
def test_overhead_benchmark_runs_all_three_variants(tmp_path):
    args = (
        "--steps",
        "2",
        "--rounds",
        "1",
        "--batch",
        "2",
        "--size",
        "32",
        "32",
        "--precision",
        "32-true",
    )  # in this process: the script's re-execution with heap reuse is its command line's (__main__)
    result = _bench("bench_overhead", *args, tmp_path=tmp_path)
    assert set(result["ratio_to_loop"]) == {"loop", "lightning", "lightning+metrics"}
    assert result["ratio_to_loop"]["loop"] == 1.0 and all(r > 0 for r in result["ratio_to_loop"].values())
