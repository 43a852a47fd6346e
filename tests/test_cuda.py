"""On a CUDA device (``gpu`` mark; skipped without one): every loss gives the CPU's values and gradients, the
metrics count the same, the device augmentation gives the CPU pipeline's crops, batched sliding windows equal
one window at a time, a bf16 training step and a
one-rank NCCL DDP run finish with finite losses. Run on a lent GPU with ``pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_SYNTHETIC
from tests.helpers.losses import PRESETS, apply_loss, example_inputs, preset_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", PRESETS)
def test_every_loss_preset_gives_the_cpu_values_and_gradients_on_cuda(name):
    logits, target = example_inputs(name)
    results = []
    for device in ("cpu", "cuda"):
        x = logits.to(device).requires_grad_()
        value = apply_loss(preset_loss(name).to(device), x, target.to(device))
        value.backward()
        results.append((value.detach().cpu(), x.grad.cpu()))
    (cpu_value, cpu_grad), (cuda_value, cuda_grad) = results
    torch.testing.assert_close(cuda_value, cpu_value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-3, atol=1e-6)


def test_metrics_count_the_same_on_cuda():
    from segloss.metrics import ConfusionScores

    torch.manual_seed(1)
    preds, target = torch.randint(0, 19, (2, 64, 64)), torch.randint(0, 19, (2, 64, 64))
    target[:, :5] = 255
    counts = []
    for device in ("cpu", "cuda"):
        metric = ConfusionScores(19).to(device)
        metric.update(preds.to(device), target.to(device))
        counts.append(metric.compute()["confmat"].cpu())
    assert torch.equal(counts[0], counts[1])


def test_the_device_augmentation_gives_the_cpu_pipelines_crops_on_cuda():
    from lightning.pytorch.utilities import move_data_to_device

    from segloss.data.datamodule import PadCollate
    from segloss.data.device_augment import augment_batch
    from segloss.data.transforms import train_transform
    from tests.helpers.device_augment import ARGS, augment_items, both_paths

    expected, _, regions = both_paths(augment_items(8, "channels_last"), ARGS)
    batch = move_data_to_device(PadCollate(255)(regions), torch.device("cuda"))  # as Lightning moves it
    got = augment_batch(batch, train_transform(**ARGS, augment_on_device=True))
    assert got["image"].is_cuda and got["mask"].is_cuda
    assert (got["image"].cpu() - expected["image"]).abs().max() < 1e-3
    assert torch.equal(got["mask"].cpu(), expected["mask"])


def test_batched_windows_equal_single_windows_on_cuda():
    from segloss.models.inference import slide_inference

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).cuda()
    image = torch.randn(2, 3, 64, 96, device="cuda")
    with torch.no_grad():
        one = slide_inference(net, image, (32, 48), (16, 24))
        batched = slide_inference(net, image, (32, 48), (16, 24), window_batch=4)
    torch.testing.assert_close(batched, one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("trainer", [["trainer=gpu"], ["trainer=ddp", "trainer.devices=1"]], ids=["bf16", "ddp_nccl"])
def test_a_training_step_on_the_gpu(make_cfg, tmp_path, trainer):
    from segloss.train import train

    cfg = make_cfg([*TINY_SYNTHETIC, f"paths.data_dir={tmp_path / 'data'}", "debug=fdr", "logger=csv", *trainer,
                    "trainer.accelerator=gpu"])  # fmt: skip
    out = train(cfg)
    assert out["trainer"].global_step == 1
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert out["trainer"].precision == ("bf16-mixed" if native else "32-true")
    assert torch.isfinite(out["trainer"].callback_metrics["train/loss_epoch"])
