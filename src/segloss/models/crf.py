"""Fully connected CRF post-processing (DeepLab v1/v2) as batched local-window mean field on the device.

The model (Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials", NeurIPS 2011) labels every pixel i with x_i ∈ {1 … C} under the energy

    E(x) = Σ_i U_i(x_i) + Σ_{i<j} μ(x_i, x_j) · k(f_i, f_j),       U_i(l) = −log softmax(z_i)_l,

with the net's logits z, the Potts compatibility μ(l, l') = [l ≠ l'] and two Gaussian kernels on the pixel
positions p and colours I (RGB in [0, 255]):

    k(f_i, f_j) = w1 · exp(−‖p_i − p_j‖² / 2θα² − ‖I_i − I_j‖² / 2θβ²)     (appearance, "bilateral")
                + w2 · exp(−‖p_i − p_j‖² / 2θγ²)                            (smoothness, "Gaussian").

Mean-field inference starts from Q = softmax(z) and repeats, for every pixel and label at once,

    m_i(l)  = Σ_m w_m · Σ_{j ∈ W(i)} k_m(f_i, f_j) Q_j(l) / Z_m(i)            (the message of kernel m)
    Q_i(l) ∝ exp(−U_i(l) − Σ_{l'} μ(l, l') m_i(l')) = exp(−U_i(l) − Σ_{l' ≠ l} m_i(l')),

and returns log Q (its argmax are the classes). Under the Potts model Σ_{l' ≠ l} m_i(l') = Σ_{l'} m_i(l') − m_i(l),
whose first term is the same for every label and cancels in the normalisation: Q_i ∝ exp(−U_i + m_i). Two
normalisations Z_m (``normalize``):

* ``"pixel"`` (default), what DeepLab ran: DeepLab's ``densecrf`` (Krähenbühl's code, version 2.2, whose
  ``PottsPotential`` divides each filtered value by the filter's response to ones) makes every message a
  kernel-weighted *average*, Z_m(i) = Σ_{j ∈ W(i)} k_m(f_i, f_j), the sums including j = i (the permutohedral
  filter does). DeepLab's weights w1, w2 are tuned for this form: each message is at most w_m.
* ``"none"``: the paper's update as written, Z_m = 1 and j ≠ i: raw kernel sums, whose size grows with the
  number of similar pixels around i (weights of a different scale from DeepLab's).

**Local window (ConvCRF).** The fully connected model sums over all pixels j; here, as in ConvCRF
(Teichmann & Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019), j runs over the
(2r+1)² window W(i) around i (``radius`` r), which is exact when the window covers the image. The
appearance kernel is evaluated on a grid ``downsample`` = s times coarser (ConvCRF's "blur"): Q and the
colours are averaged over s×s cells, cells interact with cells over a (2r+1)² window of cells (reach r·s
pixels, distances in pixels: s·Δ), and the cells' messages are bilinearly upsampled to the pixels (a cell
stands for s² pixels: weight s², its own cell s² − 1, under ``"none"``; the factor cancels under ``"pixel"``).
An image edge inside a cell is thus placed to within the cell. The smoothness kernel is spatial only: its
square window at full resolution is separable, 2·2r shifted adds per label, exact at any s, truncated at
min(r, ⌈4θγ⌉) pixels (the Gaussian is ≤ e^{−8} beyond 4θγ). No loop runs over pixels: the appearance window is
a loop over the (2r+1)² offsets of shifted tensors, whose kernels are computed once per call and held,
(2r+1)²·N·⌈H/s⌉·⌈W/s⌉ floats (38 MB for N = 1, 512×1024 at the defaults; 254 MB at s = 1, r = 5). Differences
from DeepLab's run: the window instead of the whole image, the s×s cells, and the exact Gaussians instead of
the permutohedral lattice's approximation of them (Adams, Baek & Davis, Eurographics 2010).

**Parameters.** DeepLab fixed 10 mean-field iterations and w2 = 3, θγ = 3 as defaults, cross-validating
w1 ∈ [3, 6], θα ∈ [30, 100], θβ ∈ [3, 6] (Chen et al., "Semantic Image Segmentation with Deep Convolutional
Nets and Fully Connected CRFs", ICLR 2015; "DeepLab: …, Atrous Convolution, and Fully Connected CRFs",
TPAMI 2017, §4). The released DeepLab-v2 models for PASCAL VOC 2012 give (their names bi_w, bi_xy_std,
bi_rgb_std, pos_w, pos_xy_std): ResNet-101 w1 = 4, θα = 67, θβ = 3, w2 = 3, θγ = 1; VGG-16 w1 = 4, θα = 65,
θβ = 3, w2 = 2, θγ = 2 (DeepLab-v1 LargeFOV's scripts are commonly quoted as w1 = 4, θα = 121, θβ = 5,
w2 = 3, θγ = 3). The defaults here are DeepLab-v2 ResNet-101's with 10 iterations and ``"pixel"``
normalisation; the window is ours: ``radius=8`` cells of ``downsample=4`` pixels (appearance reach ±32 px,
about θα/2 per iteration; smoothness window 4 px = 4θγ). ``benchmarks/bench_crf.py`` measures the cost.

A one-channel (sigmoid) net's logit z is taken as the two classes [−z/2, z/2] (softmax = [σ(−z), σ(z)]) and
the refined log-odds log Q(1) − log Q(0) are returned in one channel, so thresholding stays as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from segloss.errors import ConfigError
from segloss.utils import consumer_rules
from segloss.utils.consumer_rules import CRF_NORMALIZATIONS as NORMALIZATIONS
from segloss.utils.rules import Rule, require_all


def _pool(x: Tensor, s: int) -> Tensor:
    """Means over s×s cells (cells at the bottom/right border average the pixels they hold)."""
    return x if s == 1 else F.avg_pool2d(x, s, ceil_mode=True)


def _shifted(padded: Tensor, r: int, dy: int, dx: int, height: int, width: int) -> Tensor:
    """``x[..., y + dy, x + dx]`` for every (y, x) of the H×W grid, from ``x`` zero-padded by r."""
    return padded[..., r + dy : r + dy + height, r + dx : r + dx + width]


def appearance_kernels(rgb: Tensor, radius: int, downsample: int, theta_alpha: float, theta_beta: float) -> Tensor:
    """The appearance kernel between each cell and its (2r+1)² window, (2r+1)²×N×1×h×w on the s-times coarser grid
    (s = ``downsample``): exp(−s²(Δy² + Δx²)/2θα² − ‖Ī_c − Ī_c'‖²/2θβ²) with Ī the cells' mean colours; 0 outside
    the image. Offsets in row-major order, (−r, −r) first; the centre (0, 0) is index (2r+1)·r + r."""
    colour = _pool(rgb, downsample)
    height, width = colour.shape[-2:]
    r = radius
    padded = F.pad(colour, (r, r, r, r))
    inside = F.pad(colour.new_ones((1, 1, height, width)), (r, r, r, r))
    kernels = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            distance = (colour - _shifted(padded, r, dy, dx, height, width)).square_().sum(1, keepdim=True)
            spatial = downsample**2 * (dy * dy + dx * dx) / (2 * theta_alpha**2)
            distance.mul_(-1 / (2 * theta_beta**2)).sub_(spatial).exp_()
            kernels.append(distance.mul_(_shifted(inside, r, dy, dx, height, width)))
    return torch.stack(kernels)


def smoothness_radius(radius: int, theta_gamma: float) -> int:
    """The smoothness window's radius in pixels: min(r, ⌈4θγ⌉); the Gaussian is ≤ e^{−8} ≈ 3·10⁻⁴ beyond 4θγ."""
    return min(radius, math.ceil(4 * theta_gamma))


def gaussian_window_sum(q: Tensor, radius: int, theta_gamma: float) -> Tensor:
    """Σ_{|Δy|,|Δx| ≤ r} exp(−(Δy² + Δx²)/2θγ²)·q[y + Δy, x + Δx] (0 outside the image), separably: the
    Gaussian of a square window is the product of two 1-D ones, so 2·2r shifted adds instead of (2r+1)²."""
    for dim in (-2, -1):
        out, size = q.clone(), q.shape[dim]  # the centre tap, exp(0) = 1
        for d in range(1, min(radius, size - 1) + 1):
            tap = math.exp(-(d * d) / (2 * theta_gamma**2))
            out.narrow(dim, 0, size - d).add_(q.narrow(dim, d, size - d), alpha=tap)  # from y + d
            out.narrow(dim, d, size - d).add_(q.narrow(dim, 0, size - d), alpha=tap)  # from y − d
        q = out
    return q


def mean_field(
    logits: Tensor,
    rgb: Tensor,
    iterations: int = 10,
    w1: float = 4.0,
    theta_alpha: float = 67.0,
    theta_beta: float = 3.0,
    w2: float = 3.0,
    theta_gamma: float = 1.0,
    radius: int = 8,
    downsample: int = 4,
    normalize: str = "pixel",
) -> Tensor:
    """Mean-field inference of the CRF of the module docstring: log Q, N×C×H×W, for logits N×C×H×W and the image
    ``rgb`` N×K×H×W in [0, 255] (K = 3 for RGB; any K works: a grey image's one channel, say). Runs in float32
    whatever the autocast (float64 inputs stay float64); a one-channel logit returns the refined log-odds."""
    if logits.dim() != 4 or rgb.dim() != 4 or rgb.shape[0] != logits.shape[0] or rgb.shape[-2:] != logits.shape[-2:]:
        raise ValueError(
            f"mean_field needs logits N×C×H×W and an image N×K×H×W of the same N, H, W; got {tuple(logits.shape)} "
            f"and {tuple(rgb.shape)}"
        )
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}: choose one of {NORMALIZATIONS}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(logits.device.type, enabled=False):
        z = logits.to(dtype)
        binary = z.shape[1] == 1
        if binary:
            z = torch.cat([-z / 2, z / 2], 1)
        log_p = torch.log_softmax(z, 1)  # −U
        r, s = radius, downsample
        kernels = appearance_kernels(rgb.to(dtype), r, s, theta_alpha, theta_beta)  # K²×N×1×h×w
        centre = (2 * r + 1) * r + r
        r_gamma = smoothness_radius(r, theta_gamma)
        if normalize == "pixel":
            kernels = kernels * (w1 / kernels.sum(0))
            smooth_norm = w2 / gaussian_window_sum(z.new_ones((1, 1, *z.shape[-2:])), r_gamma, theta_gamma)
        else:
            kernels = kernels * (w1 * s * s)
            kernels[centre] = w1 * (s * s - 1)  # a cell's own s² − 1 other pixels (none at s = 1)
        height, width = z.shape[-2:]
        log_q = log_p
        for _ in range(iterations):
            q = log_q.exp()
            cells = _pool(q, s)
            padded = F.pad(cells, (r, r, r, r))
            message = torch.zeros_like(cells)
            for k, (dy, dx) in enumerate((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)):
                message.addcmul_(kernels[k], _shifted(padded, r, dy, dx, *cells.shape[-2:]))
            if s > 1:
                message = F.interpolate(message, scale_factor=s, mode="bilinear", align_corners=False)
                message = message[..., :height, :width].contiguous()
            smooth = gaussian_window_sum(q, r_gamma, theta_gamma)
            if normalize == "pixel":
                message.addcmul_(smooth, smooth_norm)
            else:
                message.add_(smooth, alpha=w2).sub_(q, alpha=w2)
            # Potts: −Σ_{l' ≠ l} m(l') = m(l) − Σ_{l'} m(l'), whose last term is the same for every label and
            # cancels in the normalisation: Q ∝ exp(−U + m).
            log_q = torch.log_softmax(message.add_(log_p), 1)
        return log_q[:, 1:] - log_q[:, :1] if binary else log_q


@dataclass(frozen=True)
class DenseCRF:
    """The CRF's parameters (module docstring; defaults: DeepLab-v2 ResNet-101's for VOC, our window), checked
    on construction; calling it runs :func:`mean_field`. ``DenseCRF.from_config(false | true | {key: value})``
    reads ``inference.crf``."""

    iterations: int = 10
    w1: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0
    w2: float = 3.0
    theta_gamma: float = 1.0
    radius: int = 8
    downsample: int = 4
    normalize: str = "pixel"

    # The rules of inference.crf.*: applied by __post_init__, declared in utils.consumer_rules (read by checks).
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.CRF

    def __post_init__(self) -> None:
        require_all(self.RULES, asdict(self))

    @classmethod
    def from_config(cls, value) -> DenseCRF | None:
        """None for ``None``/``false``; the defaults for ``true``; a mapping overrides some of them."""
        if isinstance(value, DenseCRF):
            return value
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.RULES))
            if unknown:
                raise ConfigError(
                    f"inference.crf.{unknown[0]} is not a CRF parameter; choose from {', '.join(cls.RULES)} "
                    "(e.g. inference.crf.iterations=5)"
                )
            return cls(**dict(value))
        raise ConfigError.value(
            "inference.crf", value, "false, true or a mapping of CRF parameters", "inference.crf=true"
        )

    def __call__(self, logits: Tensor, rgb: Tensor) -> Tensor:
        return mean_field(logits, rgb, **asdict(self))
