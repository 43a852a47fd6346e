"""DeepLab's fully connected CRF at inference (segloss.models.crf, ``inference.crf``): mean field equals a
float64 brute force over all pixel pairs (and over the window when it is smaller than the image), lowers the
mean-field free energy, keeps confident uniform predictions, flips an isolated noisy pixel, moves a weak label
boundary onto the image's edge; ``Inference``/``SegmentationModule``/prediction pass the image; bad settings
are named; against pydensecrf2 (Krähenbühl's permutohedral-lattice code) where it is installed."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from segloss.errors import ConfigError
from segloss.models.crf import DenseCRF, mean_field, smoothness_radius
from segloss.models.inference import Inference, slide_inference

PARAMS = {"w1": 4.0, "theta_alpha": 3.0, "theta_beta": 60.0, "w2": 3.0, "theta_gamma": 1.5}


def brute_force(logits, rgb, w1, theta_alpha, theta_beta, w2, theta_gamma, normalize, iterations=1, radius=None):
    """log Q of ``iterations`` parallel mean-field steps, float64, with the N²-pixel kernel matrices written out;
    ``radius``: only pairs within the (2r+1)² window (the smoothness one within min(r, ⌈4θγ⌉))."""
    z, rgb = logits.double(), rgb.double()
    _, channels, height, width = z.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    offsets = positions[:, None] - positions[None]
    squared, chebyshev = offsets.square().sum(-1), offsets.abs().amax(-1)
    out = []
    for n in range(len(z)):
        colours = rgb[n].flatten(1).T
        colour_squared = (colours[:, None] - colours[None]).square().sum(-1)
        appearance = torch.exp(-squared / (2 * theta_alpha**2) - colour_squared / (2 * theta_beta**2))
        smoothness = torch.exp(-squared / (2 * theta_gamma**2))
        if radius is not None:
            appearance = appearance * (chebyshev <= radius)
            smoothness = smoothness * (chebyshev <= smoothness_radius(radius, theta_gamma))
        if normalize == "pixel":  # kernel-weighted averages, the pixel itself included
            kernel = w1 * appearance / appearance.sum(1, keepdim=True) + w2 * smoothness / smoothness.sum(1, True)
        else:  # the paper's sums over j ≠ i
            kernel = (w1 * appearance + w2 * smoothness) * (1 - torch.eye(height * width, dtype=torch.float64))
        unary = -torch.log_softmax(z[n].flatten(1).T, 1)  # HW×C
        q = torch.softmax(-unary, 1)
        for _ in range(iterations):
            message = kernel @ q
            potts = message.sum(1, keepdim=True) - message  # Σ_{l' ≠ l} m(l')
            q = torch.softmax(-unary - potts, 1)
        out.append(q.log().T.reshape(channels, height, width))
    return torch.stack(out)


def two_regions(height=12, width=16, edge=8):
    """A red left part and a blue right part (columns ≥ ``edge``), 1×3×H×W in [0, 255]."""
    rgb = torch.zeros(1, 3, height, width)
    rgb[:, 0, :, :edge], rgb[:, 2, :, edge:] = 200.0, 200.0
    return rgb


def two_class_logits(margin: torch.Tensor, height: int) -> torch.Tensor:
    """Logits 1×2×H×W whose class-0 preference is ``margin[x]`` in column x."""
    return torch.stack([margin / 2, -margin / 2]).view(1, 2, 1, -1).expand(1, 2, height, -1).clone()


@pytest.mark.parametrize("normalize", ["pixel", "none"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_mean_field_equals_the_dense_brute_force_when_the_window_covers_the_image(normalize, iterations):
    torch.manual_seed(0)
    logits, rgb = torch.randn(2, 3, 5, 6) * 2, torch.rand(2, 3, 5, 6) * 255
    expected = brute_force(logits, rgb, **PARAMS, normalize=normalize, iterations=iterations)
    kw = {**PARAMS, "iterations": iterations, "radius": 6, "downsample": 1, "normalize": normalize}
    exact = mean_field(logits.double(), rgb.double(), **kw)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(mean_field(logits, rgb, **kw).double(), expected, rtol=0, atol=5e-5)  # float32
    assert (exact.argmax(1) != logits.argmax(1)).any()  # the pairwise terms changed some labels


@pytest.mark.parametrize("normalize", ["pixel", "none"])
@pytest.mark.parametrize(("radius", "theta_gamma"), [(1, 1.5), (2, 1.5), (3, 0.5)])  # θγ=0.5: smoothness r = 2
def test_the_local_window_equals_the_brute_force_restricted_to_the_window(normalize, radius, theta_gamma):
    torch.manual_seed(1)
    logits, rgb = torch.randn(1, 4, 7, 9) * 2, torch.rand(1, 3, 7, 9) * 255
    params = {**PARAMS, "theta_gamma": theta_gamma}
    expected = brute_force(logits, rgb, **params, normalize=normalize, iterations=2, radius=radius)
    got = mean_field(logits.double(), rgb.double(), **params, iterations=2, radius=radius, downsample=1,
                     normalize=normalize)  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    dense = brute_force(logits, rgb, **params, normalize=normalize, iterations=2)
    assert (got - dense).abs().max() > 1e-3  # the window does drop pairs


@pytest.mark.parametrize("seed", range(4))
def test_parallel_mean_field_lowers_the_free_energy(seed):
    """F(Q) = Σ_i Σ_l Q_i(l)U_i(l) + ½ Σ_{i≠j} k_ij Σ_{l≠l'} Q_i(l)Q_j(l') + Σ_i Σ_l Q_i(l) log Q_i(l), the
    KL divergence to the Gibbs distribution up to log Z, falls at every step (the paper's update, whole window)."""
    torch.manual_seed(seed)
    height, width = 6, 7
    logits = torch.randn(1, 3, height, width, dtype=torch.float64) * 2
    rgb = (torch.rand(1, 3, height, width) > 0.5).double() * 200 + torch.randn(1, 3, height, width).double() * 5
    params = {"w1": 1.0, "theta_alpha": 3.0, "theta_beta": 20.0, "w2": 0.5, "theta_gamma": 1.0}
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    squared = (positions[:, None] - positions[None]).square().sum(-1)
    colours = rgb[0].flatten(1).T
    kernel = params["w1"] * torch.exp(-squared / 18 - (colours[:, None] - colours[None]).square().sum(-1) / 800)
    kernel = (kernel + params["w2"] * torch.exp(-squared / 2)) * (1 - torch.eye(height * width, dtype=torch.float64))
    unary = -torch.log_softmax(logits[0].flatten(1).T, 1)

    def free_energy(log_q):
        q = log_q[0].flatten(1).T.exp()
        return float((q * unary).sum() + 0.5 * ((kernel @ q) * (1 - q)).sum() + (q * q.log()).sum())

    energies = [free_energy(torch.log_softmax(logits, 1))]
    for iterations in range(1, 7):
        energies.append(free_energy(mean_field(logits, rgb, iterations, **params, radius=7, downsample=1,
                                               normalize="none")))  # fmt: skip
    assert all(later < earlier for earlier, later in itertools.pairwise(energies)), energies
    assert energies[-1] < energies[0] - 1.0


@pytest.mark.parametrize("downsample", [1, 4])
def test_a_confident_uniform_prediction_on_a_constant_image_is_the_one_pixel_fixed_point(downsample):
    """Every pixel alike and ``pixel`` normalisation: each message is (w1 + w2)·Q, so every pixel follows the
    one-pixel recursion Q ← softmax(log p + (w1 + w2)·Q), at the border and on the coarse grid too."""
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    logits = p.log().view(1, 3, 1, 1).expand(2, 3, 10, 13).clone()
    rgb = torch.full((2, 3, 10, 13), 90.0, dtype=torch.float64)
    q = p.clone()
    for _ in range(10):
        q = torch.softmax(p.log() + (4.0 + 3.0) * q, 0)
    got = mean_field(logits, rgb, 10, radius=3, downsample=downsample).exp()
    torch.testing.assert_close(got, q.view(1, 3, 1, 1).expand_as(got), rtol=0, atol=1e-12)
    assert q[0] > 0.99 and (got.argmax(1) == 0).all()  # the confident class only gains


@pytest.mark.parametrize("crf", [{}, {"downsample": 1}, {"downsample": 2, "radius": 4}], ids=["default", "s1", "s2"])
def test_an_isolated_noisy_pixel_inside_a_uniform_colour_region_is_flipped(crf):
    height, width = 12, 16
    margin = torch.where(torch.arange(width) < 8, 3.0, -3.0)
    logits = two_class_logits(margin, height)
    logits[0, :, 5, 3] = torch.tensor([-1.0, 1.0])  # class 1 by 2 in the red region
    truth = (torch.arange(width) >= 8).long().expand(height, width)
    assert (logits.argmax(1)[0] != truth).sum() == 1
    refined = DenseCRF(**crf)(logits, two_regions(height, width))
    assert torch.equal(refined.argmax(1)[0], truth)


@pytest.mark.parametrize(
    ("crf", "edge", "found"),
    [({"downsample": 1}, 8, 8), ({"downsample": 1}, 6, 6), ({}, 8, 8), ({}, 6, 8)],
    ids=["s1-edge8", "s1-edge6", "default-edge8", "default-edge6-inside-a-cell"],
)
def test_a_weak_label_boundary_moves_onto_the_image_edge(crf, edge, found):
    """The net is sure away from the boundary and unsure near it (it puts the boundary at column 10): the CRF
    labels by the image's colours, so the boundary moves to the edge; on a constant image it does not. With
    ``downsample`` s the appearance kernel sees s×s cells: an edge inside a cell (column 6 in the 4-px cell
    4–7) is found to the cell's side (column 8), the cell's mixed colour being like neither region."""
    height, width = 12, 16
    margin = torch.full((width,), 3.0)
    margin[4:10], margin[10:12], margin[12:] = 0.3, -0.3, -3.0
    logits = two_class_logits(margin, height)
    refined = DenseCRF(**crf)(logits, two_regions(height, width, edge)).argmax(1)
    assert torch.equal(refined[0], (torch.arange(width) >= found).long().expand(height, width))
    constant = DenseCRF(**crf)(logits, torch.full((1, 3, height, width), 100.0)).argmax(1)
    assert not torch.equal(constant, refined)


def test_a_one_channel_sigmoid_logit_is_the_two_classes_minus_and_plus_half_z():
    torch.manual_seed(2)
    z, rgb = torch.randn(2, 1, 6, 8, dtype=torch.float64) * 3, torch.rand(2, 3, 6, 8, dtype=torch.float64) * 255
    two = mean_field(torch.cat([-z / 2, z / 2], 1), rgb, 3, radius=2, downsample=1)
    one = mean_field(z, rgb, 3, radius=2, downsample=1)
    assert one.shape == z.shape
    torch.testing.assert_close(one, two[:, 1:] - two[:, :1], rtol=0, atol=1e-12)  # refined log-odds


def test_the_crf_runs_in_float32_under_autocast():
    torch.manual_seed(3)
    logits, rgb = torch.randn(1, 5, 16, 20), torch.rand(1, 3, 16, 20) * 255
    expected = DenseCRF()(logits, rgb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = DenseCRF()(logits.bfloat16(), rgb)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, DenseCRF()(logits.bfloat16().float(), rgb), rtol=0, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.95


class FixedNet(nn.Module):
    """Returns the same logits for every image of the batch's size (an identity-like net: the test's logits)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, image):
        height, width = image.shape[-2:]
        return self.logits[..., :height, :width].expand(len(image), -1, -1, -1) + 0 * self.anchor


def noisy_scene(height=12, width=16):
    """Two colour regions, confident logits with one wrong pixel, the image as uint8: (logits, rgb, truth)."""
    logits = two_class_logits(torch.where(torch.arange(width) < 8, 3.0, -3.0), height)
    logits[0, :, 5, 3] = torch.tensor([-1.0, 1.0])
    return logits, two_regions(height, width), (torch.arange(width) >= 8).long().expand(1, height, width)


def test_inference_crf_true_refines_whole_and_slide_logits():
    logits, rgb, truth = noisy_scene()
    net, image = (lambda x: x[:, :2]), torch.cat([logits, torch.zeros(1, 1, 12, 16)], 1)  # the image holds logits
    whole = Inference("whole", crf=True)
    torch.testing.assert_close(whole(net, image, rgb=rgb), DenseCRF()(logits, rgb), rtol=0, atol=0)
    assert torch.equal(whole.classes(net, image, lambda z: z.argmax(1), rgb=rgb), truth)
    assert torch.equal(Inference("whole").classes(net, image, lambda z: z.argmax(1)), logits.argmax(1))
    slide = Inference("slide", crop_size=(8, 8), stride=(4, 4), crf={"iterations": 5, "downsample": 1})
    averaged = slide_inference(net, image, (8, 8), (4, 4))
    torch.testing.assert_close(averaged, logits, rtol=0, atol=0)
    expected = DenseCRF(iterations=5, downsample=1)(averaged, rgb)
    torch.testing.assert_close(slide(net, image, rgb=rgb), expected, rtol=0, atol=0)
    assert torch.equal(slide.classes(net, image, lambda z: z.argmax(1), rgb=rgb), expected.argmax(1))
    assert torch.equal(expected.argmax(1), truth)
    assert "crf=DenseCRF(iterations=5" in repr(slide)


@pytest.mark.parametrize("crf", [None, False])
def test_inference_without_crf_is_unchanged(crf):
    assert Inference("whole", crf=crf).crf is None and repr(Inference(crf=crf)) == "Inference(mode='whole')"


def test_the_crf_without_an_image_is_a_clear_error():
    net = FixedNet(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"inference.crf is on but no image was given.*rgb="):
        Inference(crf=True)(net, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="same N, H, W"):
        mean_field(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 5))


@pytest.mark.parametrize(
    ("crf", "needle"),
    [
        ({"iterations": 0}, "inference.crf.iterations=0 must be a whole number ≥ 1"),
        ({"iterations": 2.5}, "inference.crf.iterations=2.5"),
        ({"radius": 0}, "inference.crf.radius=0"),
        ({"downsample": True}, "inference.crf.downsample=True"),
        ({"theta_beta": 0}, "inference.crf.theta_beta=0 must be a colour distance > 0"),
        ({"w1": -1}, "inference.crf.w1=-1 must be a weight ≥ 0"),
        ({"normalize": "sum"}, "inference.crf.normalize='sum' must be one of ('pixel', 'none')"),
        ({"sigma": 3}, "inference.crf.sigma is not a CRF parameter; choose from iterations, w1"),
        ("yes", "inference.crf='yes' must be false, true or a mapping of CRF parameters"),
    ],
)
def test_bad_crf_settings_are_named(crf, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Inference("whole", crf=crf)


def test_inference_crf_true_from_the_command_line_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segloss.utils.config import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        plain = compose("eval")
        on = compose("eval", overrides=["inference.crf=true"])
        custom = compose("eval", overrides=["inference=slide", "inference.crf={iterations: 5, downsample: 2}"])
    assert Inference(**OmegaConf.to_container(plain.inference)).crf is None
    assert Inference(**OmegaConf.to_container(on.inference)).crf == DenseCRF()
    slide = Inference(**OmegaConf.to_container(custom.inference))
    assert slide.mode == "slide" and slide.crf == DenseCRF(iterations=5, downsample=2)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer: the logged values go nowhere
@pytest.mark.parametrize("uint8", [True, False], ids=["uint8", "normalised"])
def test_the_module_s_evaluation_step_passes_the_rgb_image_to_the_crf(uint8):
    from segloss.losses import CrossEntropyLoss
    from segloss.models.module import SegmentationModule

    logits, rgb, truth = noisy_scene()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = rgb.to(torch.uint8)
    if not uint8:  # what the data's eval transform gives: (x/255 − mean)/std
        image = (image.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    batch = {"image": image, "mask": truth.clone(), "name": ["a"]}
    outputs = {}
    for crf in (None, True):
        module = SegmentationModule(FixedNet(logits), CrossEntropyLoss(), None, num_classes=2, input_mean=mean,
                                    input_std=std, inference={"mode": "whole", "crf": crf})  # fmt: skip
        module.eval()
        module.val_eval.start()
        with torch.no_grad():
            outputs[crf] = module._eval_step("val", batch)["preds"]
        confmat = module.val_eval.compute()[0]["confmat"]
        assert int(confmat.sum()) == truth.numel()
    assert torch.equal(outputs[None], logits.argmax(1))  # the net's one wrong pixel
    assert torch.equal(outputs[True], truth)
    expected = DenseCRF()(logits, rgb).argmax(1)
    assert torch.equal(outputs[True], expected)


def test_predict_passes_the_uint8_image_to_the_crf():
    from segloss.models.inference import predict_indices

    logits, rgb, truth = noisy_scene()

    class Module(nn.Module):  # what predict_indices needs of a SegmentationModule
        def __init__(self) -> None:
            super().__init__()
            self.net, self.inference = FixedNet(logits), Inference("whole", crf=True)

        def forward(self, x):
            return self.net(x)

        def to_classes(self, z):
            return z.argmax(1)

    image = rgb[0].to(torch.uint8)
    classes = predict_indices(Module(), lambda item: {**item, "image": item["image"].float() / 255}, image,
                              torch.device("cpu"))  # fmt: skip
    assert np.array_equal(classes, truth[0].numpy().astype(np.uint8))


@pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 is not installed (optional "
                    "reference: pip install pydensecrf2==1.1, a Cython build of Krähenbühl's densecrf)")  # fmt: skip
@pytest.mark.parametrize(
    ("params", "iterations", "max_diff", "mean_diff", "min_agree"),
    [
        ({"w1": 4.0, "theta_alpha": 5.0, "theta_beta": 10.0, "w2": 3.0, "theta_gamma": 1.0}, 1, 0.1, 0.01, 0.97),
        ({"w1": 4.0, "theta_alpha": 5.0, "theta_beta": 10.0, "w2": 3.0, "theta_gamma": 1.0}, 5, 0.05, 0.002, 1.0),
        ({"w1": 4.0, "theta_alpha": 10.0, "theta_beta": 20.0, "w2": 3.0, "theta_gamma": 3.0}, 5, 0.1, 0.002, 1.0),
    ],
)
def test_the_whole_window_agrees_with_pydensecrf(params, iterations, max_diff, mean_diff, min_agree):
    """pydensecrf's inference with per-pixel normalisation (NORMALIZE_AFTER: DeepLab's densecrf 2.2 form) filters
    with the permutohedral lattice, an approximation of the Gaussians: the marginals agree to ``max_diff``
    (largest |ΔQ|) and ``mean_diff`` (mean |ΔQ|), the labels at ``min_agree`` of the pixels."""
    import pydensecrf.densecrf as dcrf

    torch.manual_seed(0)
    height, width, channels = 12, 16, 3
    rgb = (two_regions(height, width) + torch.randn(1, 3, height, width) * 4).clamp(0, 255).round()
    logits = torch.randn(1, channels, height, width) * 1.5
    logits[:, 0, :, :8] += 1
    logits[:, 1, :, 8:] += 1
    crf = dcrf.DenseCRF2D(width, height, channels)
    crf.setUnaryEnergy(np.ascontiguousarray(-torch.log_softmax(logits[0], 0).reshape(channels, -1).numpy()))
    crf.addPairwiseGaussian(sxy=params["theta_gamma"], compat=params["w2"], kernel=dcrf.DIAG_KERNEL,
                            normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
    crf.addPairwiseBilateral(sxy=params["theta_alpha"], srgb=params["theta_beta"], compat=params["w1"],
                             rgbim=np.ascontiguousarray(rgb[0].permute(1, 2, 0).numpy().astype(np.uint8)),
                             kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
    theirs = np.array(crf.inference(iterations)).reshape(channels, height, width)
    ours = mean_field(logits.double(), rgb.double(), iterations, **params, radius=16, downsample=1)[0].exp().numpy()
    difference = np.abs(theirs - ours)
    assert difference.max() < max_diff and difference.mean() < mean_diff, (difference.max(), difference.mean())
    assert (theirs.argmax(0) == ours.argmax(0)).mean() >= min_agree
    assert (ours.argmax(0) != logits[0].argmax(0).numpy()).mean() > 0.2  # the CRF did change labels


def test_the_crf_on_volumes_is_refused_naming_the_switch():
    from segloss.errors import ConfigError
    from segloss.models.inference import Inference

    with pytest.raises(ConfigError, match=r"inference.crf=true refines 2D images .* set inference.crf=false"):
        Inference(mode="gaussian", patch_size=[8, 16, 16], crf=True)
    assert Inference(mode="gaussian", patch_size=[16, 16], crf=True).crf is not None  # 2D windows may take it
