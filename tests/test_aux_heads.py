"""Auxiliary heads (model.aux): extra outputs in training only, the loss on each at its weight, the main
logits unchanged; an FCN head on an smp encoder stage, deep supervision on the seed U-Net."""

from __future__ import annotations

import pytest
import torch

from segloss.errors import ConfigError
from segloss.losses import DiceLoss
from segloss.models.module import SegmentationModule
from segloss.models.nets.aux_heads import AuxiliaryHeads
from segloss.models.nets.smp_factory import build_smp_model
from segloss.models.nets.unet import UNet
from tests.conftest import QUIET_RUN, TINY_SYNTHETIC, fit


def _batch(h: int = 37, w: int = 45, c: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(2, 3, h, w, generator=g), "mask": torch.randint(0, c, (2, h, w), generator=g)}


@pytest.mark.parametrize("kind", ["unet", "smp"])
def test_aux_outputs_exist_in_training_only_and_leave_the_main_logits_alone(kind):
    torch.manual_seed(0)
    if kind == "unet":
        net, weights = UNet(num_classes=4, base_channels=4, depth=3), [0.5, 0.25]
    else:
        net, weights = build_smp_model("DeepLabV3Plus", 4, encoder_name="resnet18"), [0.4]
    plain_state = {k: v.clone() for k, v in net.state_dict().items()}
    wrapped = AuxiliaryHeads(net, 4, weights=weights)
    image = _batch()["image"]
    wrapped.eval()
    with torch.no_grad():
        main = wrapped(image)
        net.load_state_dict(plain_state)
        assert torch.equal(main, net(image))  # eval: the net's own logits, nothing else
    wrapped.train()
    logits, aux = wrapped(image)
    assert logits.shape == (2, 4, 37, 45) and len(aux) == len(weights)
    assert all(a.shape == logits.shape for a in aux)  # upsampled to the padded frame and cropped like the main


def test_the_loss_adds_each_auxiliary_loss_at_its_weight():
    torch.manual_seed(0)
    net = AuxiliaryHeads(UNet(num_classes=4, base_channels=4, depth=3), 4, weights=[0.5, 0.25])
    module = SegmentationModule(net=net, loss=DiceLoss(), optimizer=None, num_classes=4,
                                deep_supervision=net.weights).train()  # fmt: skip
    batch = _batch()
    loss, logits, terms = module.model_step(batch)
    torch.manual_seed(0)
    _, aux = net(batch["image"])
    dice = DiceLoss()
    expected = dice(logits, batch["mask"]) + 0.5 * dice(aux[0], batch["mask"]) + 0.25 * dice(aux[1], batch["mask"])
    assert set(terms) == {"aux0", "aux1"} and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in net.heads)


def test_the_module_logs_the_terms_any_loss_names_without_knowing_its_class():
    """The loss side owns its structure (segloss.losses.structure): a loss of its own with ``with_terms``."""

    class Halves(torch.nn.Module):
        def with_terms(self, logits, target):
            terms = {"dice": DiceLoss()(logits, target), "half": logits.mean() * 0}
            return 0.5 * terms["dice"] + terms["half"], terms

        def forward(self, logits, target):
            return self.with_terms(logits, target)[0]

    torch.manual_seed(0)
    net = AuxiliaryHeads(UNet(num_classes=4, base_channels=4, depth=3), 4, weights=[0.5])
    module = SegmentationModule(net=net, loss=Halves(), optimizer=None, num_classes=4, deep_supervision=[0.5]).train()
    loss, _, terms = module.model_step(_batch())
    assert set(terms) == {"dice", "half", "aux0"}
    assert loss.item() == pytest.approx(0.5 * terms["dice"].item() + 0.5 * terms["aux0"].item(), rel=1e-6)


def test_bad_aux_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="at most 2 weights"):
        AuxiliaryHeads(UNet(num_classes=2, base_channels=4, depth=3), 2, weights=[0.5, 0.25, 0.1])
    with pytest.raises(ConfigError, match="one auxiliary FCN head"):
        AuxiliaryHeads(build_smp_model("FPN", 2, encoder_name="resnet18"), 2, weights=[0.4, 0.2])
    with pytest.raises(ConfigError, match="non-negative"):
        AuxiliaryHeads(UNet(num_classes=2, base_channels=4, depth=2), 2, weights=[])


@pytest.mark.slow
def test_a_training_with_deep_supervision_logs_the_aux_terms_and_evaluates_the_main_head(tmp_path):
    import csv

    run = fit([*TINY_SYNTHETIC, *QUIET_RUN, f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1",
               "+model.aux.weights=[0.5]", "trainer.log_every_n_steps=4"], tmp_path)  # fmt: skip
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("train/loss/aux0_step") for row in rows)
    assert not any(key.startswith("val/loss/aux") for key in rows[0])  # evaluation sees the main head only
    assert 0 <= float(run["results"]["mIoU"]) <= 1
    assert isinstance(run["trainer"].lightning_module.net, AuxiliaryHeads)


def test_unknown_aux_keys_are_named():
    from segloss.models.nets.aux_heads import with_aux_heads

    with pytest.raises(ConfigError, match=r"unknown keys \['weight'\]"):
        with_aux_heads(UNet(num_classes=2, base_channels=4, depth=2), 2, {"weight": 0.4})
    net = UNet(num_classes=2, base_channels=4, depth=2)
    assert with_aux_heads(net, 2, None) is net
