"""The nnU-Net-style 3D U-Net (segloss.models.nets.unet3d), its deep supervision (model.aux through
AuxiliaryHeads' hooks, trilinear), its config, and the 2D seed U-Net and its auxiliary heads left as they were."""

from __future__ import annotations

import hashlib

import hydra
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segloss.errors import ConfigError
from segloss.losses import DeepSupervision
from segloss.models.nets.aux_heads import AuxiliaryHeads, with_aux_heads
from segloss.models.nets.unet import UNet
from segloss.models.nets.unet3d import ConvBlock, UNet3D, pad_to_strides

ANISO = {"strides": [[1, 2, 2], [2, 2, 2], [1, 2, 2]], "kernel_sizes": [[1, 3, 3], [1, 3, 3], 3, 3]}


def _volume(*size: int, c: int = 1, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(5, 17, 23), (16, 16, 16), (1, 1, 1), (3, 9, 30)])
@pytest.mark.parametrize("arch", [{}, ANISO])
def test_logits_at_input_size_for_any_size(size, arch):
    net = UNet3D(num_classes=3, in_channels=2, base_channels=4, depth=3, **arch)
    for mode in (net.eval, net.train):  # InstanceNorm needs >1 voxel per channel in both modes: padded so
        mode()
        assert net(_volume(*size, c=2)).shape == (2, 3, *size)


def test_non_divisible_sizes_are_replicate_padded_and_cropped_back():
    torch.manual_seed(0)
    net = UNet3D(num_classes=2, base_channels=4, depth=2, **{"strides": [[1, 2, 2], 2], "kernel_sizes": [3, 3, 3]})
    net.eval()
    assert net.total_stride == (2, 4, 4)
    x = _volume(5, 10, 13)
    padded = F.pad(x, (0, 3, 0, 2, 0, 1), mode="replicate")  # to 6×12×16
    assert torch.equal(pad_to_strides(x, (2, 4, 4))[0], padded)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :5, :10, :13], rtol=0, atol=0)


def test_the_nnunet_design():
    """Widths min(32·2^k, 320); per stage 2 × (conv → InstanceNorm3d(affine, eps 1e-5) → LeakyReLU(0.01)); strided
    conv down, transposed conv (kernel = stride) up, 1×1×1 head; He init with slope 0.01 (Isensee et al. 2021)."""
    net = UNet3D(num_classes=4)
    assert net.widths == [32, 64, 128, 256, 320, 320]
    assert 30e6 < sum(p.numel() for p in net.parameters()) < 32e6  # nnU-Net's 3d_fullres: about 31 M
    blocks = [m for m in net.modules() if isinstance(m, ConvBlock)]
    assert len(blocks) == 2 * (6 + 5)  # 6 encoder stages, 5 decoder stages
    for conv, norm, act in blocks:
        assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1)
        assert isinstance(norm, nn.InstanceNorm3d) and norm.affine and norm.eps == 1e-5
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01
    assert [stage[0][0].stride for stage in net.down] == [(2, 2, 2)] * 5
    assert not any(isinstance(m, nn.MaxPool3d) for m in net.modules())
    assert [(up.up.kernel_size, up.up.stride) for up in net.up] == [((2, 2, 2), (2, 2, 2))] * 5
    assert net.head.kernel_size == (1, 1, 1) and net.head.out_channels == 4
    aniso = UNet3D(num_classes=2, base_channels=4, depth=3, **ANISO)
    assert aniso.total_stride == (2, 8, 8)
    assert aniso.stem[0][0].kernel_size == (1, 3, 3) and aniso.down[0][0][0].stride == (1, 2, 2)
    assert aniso.up[0].up.kernel_size == (1, 2, 2)  # the coarsest decoder stage undoes the last stride
    with pytest.raises(ValueError, match="3 strides and 4 kernel_sizes"):
        UNet3D(num_classes=2, depth=3, strides=[2, 2])
    with pytest.raises(ValueError, match="odd"):
        UNet3D(num_classes=2, depth=1, kernel_sizes=[3, 2])
    with pytest.raises(ValueError, match="N×C×D×H×W"):
        aniso(torch.randn(1, 1, 8, 8))


def test_gradients_reach_the_input():
    net = UNet3D(num_classes=3, base_channels=4, depth=2)
    x = _volume(6, 10, 10).requires_grad_()
    net(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_deep_supervision_trilinear_aux_heads_in_training_only():
    torch.manual_seed(0)
    net = UNet3D(num_classes=3, base_channels=4, depth=3, **ANISO)
    plain = {k: v.clone() for k, v in net.state_dict().items()}
    wrapped = with_aux_heads(net, 3, {"weights": [0.5, 0.25]})
    assert isinstance(wrapped, AuxiliaryHeads) and all(isinstance(h, nn.Conv3d) for h in wrapped.heads)
    features = []
    net.up[-2].register_forward_hook(lambda module, inputs, output: features.append(output))
    x = _volume(5, 17, 23)
    wrapped.eval()
    with torch.no_grad():
        main = wrapped(x)
        net.load_state_dict(plain)
        assert torch.equal(main, net(x))  # evaluation: the net's own logits only
    wrapped.train()
    features.clear()
    logits, aux = wrapped(x)
    assert logits.shape == (2, 3, 5, 17, 23) and [a.shape for a in aux] == [logits.shape] * 2
    # the finest auxiliary head is on the decoder stage before the last, upsampled to the padded frame, cropped
    frame = pad_to_strides(x, net.padded_multiples(x.shape[2:]))[0].shape[2:]
    expected = F.interpolate(wrapped.heads[0](features[-1]), size=frame, mode="trilinear", align_corners=False)
    torch.testing.assert_close(aux[0], expected[..., :5, :17, :23], rtol=0, atol=0)
    assert features[-1].shape[2:] == (frame[0], frame[1] // 2, frame[2] // 2)  # the last stage undoes [1, 2, 2]
    target = torch.randint(0, 3, (2, 5, 17, 23))
    loss = nn.CrossEntropyLoss()
    total, main_logits, terms = DeepSupervision([0.5, 0.25])(loss, (logits, aux), target)
    expected_total = loss(logits, target) + 0.5 * loss(aux[0], target) + 0.25 * loss(aux[1], target)
    assert main_logits is logits and set(terms) == {"aux0", "aux1"}
    torch.testing.assert_close(total, expected_total)
    total.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in wrapped.heads)
    with pytest.raises(ConfigError, match="at most 2 weights"):
        AuxiliaryHeads(UNet3D(num_classes=2, base_channels=4, depth=3), 2, weights=[0.5, 0.25, 0.125])


def test_the_seed_unet_and_its_aux_heads_are_unchanged():
    """The 2D U-Net's state_dict keys and outputs, and its auxiliary heads', equal a reference computed with the
    code before the 3D work (aux_heads.py before it learnt UNet3D): old checkpoints load, results stay."""
    torch.manual_seed(0)
    net = UNet(num_classes=3, in_channels=3, base_channels=4, depth=2)
    keys = list(net.state_dict())
    assert len(keys) == 66 and hashlib.sha256(",".join(keys).encode()).hexdigest()[:16] == "0eb77ac38b37da96"
    x = torch.randn(2, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net.eval()(x)
    assert (out.sum().item(), out.abs().sum().item()) == pytest.approx((309.5133, 661.6714), rel=1e-4)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.48652, -0.20389, 0.07383], abs=1e-4)
    torch.manual_seed(0)
    wrapped = AuxiliaryHeads(UNet(num_classes=3, in_channels=3, base_channels=4, depth=2), 3, weights=[0.5]).train()
    assert hashlib.sha256(",".join(wrapped.state_dict()).encode()).hexdigest()[:16] == "d63184b39bca4c43"
    assert isinstance(wrapped.heads[0], nn.Conv2d)
    logits, aux = wrapped(x)
    assert (logits.sum().item(), aux[0].sum().item(), aux[0].abs().sum().item()) == pytest.approx(
        (556.0836, 555.8294, 726.0859), rel=1e-4
    )
    assert aux[0][0, :, 0, 0].tolist() == pytest.approx([0.42987, -0.38366, -0.43215], abs=1e-4)


def test_the_config_builds_the_demo_net_with_the_data_channels(make_cfg):
    cfg = make_cfg(["model=unet3d"])
    assert cfg.model.net.in_channels == 1  # data without in_channels: 1
    net = hydra.utils.instantiate(cfg.model.net).eval()
    from segloss.models.module import SegmentationModule

    assert SegmentationModule(net, nn.Identity(), None, channels_last=True).channels_last is False  # 5-D weights
    assert isinstance(net, UNet3D) and net.widths == [8, 16, 32, 64]
    with torch.no_grad():
        assert net(_volume(7, 12, 20, n=1)).shape == (1, cfg.data.num_classes, 7, 12, 20)
    with_channels = make_cfg(["model=unet3d", "+data.in_channels=4"])
    assert hydra.utils.instantiate(with_channels.model.net).stem[0][0].in_channels == 4


def test_the_module_trains_the_3d_net_with_deep_supervision(make_cfg):
    from segloss.build import build_module

    module = build_module(make_cfg(["model=unet3d", "+model.aux.weights=[0.5,0.25]"]), with_optimizer=False)
    assert isinstance(module.net, AuxiliaryHeads) and module.net.weights == [0.5, 0.25]
    k = module.hparams.num_classes
    batch = {"image": _volume(6, 12, 12), "mask": torch.randint(0, k, (2, 6, 12, 12))}
    loss, logits, terms = module.train().model_step(batch)
    assert logits.shape == (2, k, 6, 12, 12) and {"aux0", "aux1"} <= set(terms) and torch.isfinite(loss)
