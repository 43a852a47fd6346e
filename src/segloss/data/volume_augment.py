"""``VolumeAugment``: nnU-Net's 3D training augmentation (Isensee et al., Nature Methods 2021, supplementary
"data augmentation"; defaults of nnU-Net v2's ``nnUNetTrainer``), on one patch of
:class:`segloss.data.volumes.MSDVolumeDataset`. Applied in this order, each with its own probability per item:

=====================  ======  ===============================================================================
operation              p       what
=====================  ======  ===============================================================================
rotation               0.2     angles ~ U(−30°, 30°) about each of the three axes (``rotation_degrees``)
scaling                0.2     coordinates × s, s ~ U(0.7, 1.4) (s < 1 zooms in; one factor for all axes)
Gaussian noise         0.1     x + σ·N(0, 1), σ ~ U(0, 0.1) (one σ for all channels)
brightness             0.15    x · m per channel, m ~ U(0.75, 1.25)
contrast               0.15    per channel (x − mean)·f + mean, clipped to the channel's former [min, max];
                               f ~ U(0.75, 1) or U(1, 1.25) with equal chance
inverted gamma         0.1     gamma (below) of −x, negated back
gamma                  0.3     per channel rescaled to [0, 1], raised to γ ~ U(0.7, 1) or U(1, 1.5) with equal
                               chance, rescaled back, then shifted/scaled to its former mean and std
flips                  0.5     along each axis independently (D, H and W)
=====================  ======  ===============================================================================

Rotation and scaling are one affine map in voxel-index space (as batchgenerators, which nnU-Net uses), resampled
by one ``torch.nn.functional.grid_sample``: the image trilinearly (zeros outside), the mask by nearest
neighbour (``ignore_index`` outside, so invented voxels count in no loss). When neither is drawn the patch is
cut out exactly (no interpolation). The blur and low-resolution simulation of nnU-Net are not applied.

Region protocol (``takes_region = True``): the dataset passes ``region=``, a reader of the region of any size
centred on the patch, and a drawn rotation/scaling reads just the region it samples from (:meth:`region_size`),
so the rotated or zoomed-out patch holds real voxels rather than padding (nnU-Net enlarges its crops likewise);
only where that region leaves the volume is it padded.

Randomness: every parameter comes from a numpy generator seeded by one draw from torch's global RNG, which
:class:`segloss.data.sampling.SeededItems` seeds per item from (seed, epoch, index): the same augmentation for
any ``num_workers``, world size or resume. ``rng=`` gives a generator of one's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segloss.errors import ConfigError


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """3×3 rotation in (d, h, w) index space: about axis 0, then 1, then 2 by ``angles`` (radians)."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = math.cos(angle)
        turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
        matrix = matrix @ turn
    return matrix


def _range(name: str, value, low: float | None = None) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1] or (low is not None and pair[0] < low):
        raise ConfigError.value(f"data.train_transform.{name}", list(value), "[lo, hi] with lo ≤ hi",
                                f"data.train_transform.{name}=[0.75,1.25]")  # fmt: skip
    return pair


def _halves(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's draw of a factor around 1: U(low, 1) or U(1, high) with equal chance (when low < 1 < high)."""
    if low < 1 < high:
        return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


class VolumeAugment:
    """The transform of the module docstring on items ``{"image": float C×D×H×W, "mask": int64 D×H×W, …}``."""

    takes_region = True  # MSDVolumeDataset passes region= (module docstring)

    def __init__(
        self,
        p_flip: float = 0.5,
        flip_axes: Sequence[int] = (0, 1, 2),
        p_rotation: float = 0.2,
        rotation_degrees: float | Sequence[float] = 30.0,
        p_scale: float = 0.2,
        scale_range: Sequence[float] = (0.7, 1.4),
        p_noise: float = 0.1,
        noise_std: Sequence[float] = (0.0, 0.1),
        p_brightness: float = 0.15,
        brightness_range: Sequence[float] = (0.75, 1.25),
        p_contrast: float = 0.15,
        contrast_range: Sequence[float] = (0.75, 1.25),
        p_gamma: float = 0.3,
        p_gamma_inverted: float = 0.1,
        gamma_range: Sequence[float] = (0.7, 1.5),
        ignore_index: int = 255,
    ) -> None:
        probabilities = dict(p_flip=p_flip, p_rotation=p_rotation, p_scale=p_scale, p_noise=p_noise,
                             p_brightness=p_brightness, p_contrast=p_contrast, p_gamma=p_gamma,
                             p_gamma_inverted=p_gamma_inverted)  # fmt: skip
        for name, p in probabilities.items():
            if not 0 <= float(p) <= 1:
                raise ConfigError.value(f"data.train_transform.{name}", p, "a probability in [0, 1]",
                                        f"data.train_transform.{name}=0.2")  # fmt: skip
        self.p = {name.removeprefix("p_"): float(p) for name, p in probabilities.items()}
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ConfigError.value("data.train_transform.flip_axes", list(flip_axes), "axes among 0, 1, 2 (D, H, W)",
                                    "data.train_transform.flip_axes=[1,2]")  # fmt: skip
        one = np.ndim(rotation_degrees) == 0
        degrees = [float(rotation_degrees)] * 3 if one else [float(d) for d in rotation_degrees]
        if len(degrees) != 3 or any(not 0 <= d <= 180 for d in degrees):
            raise ConfigError.value("data.train_transform.rotation_degrees", rotation_degrees,
                                    "a maximum angle in [0, 180] or one per axis [d, h, w]",
                                    "data.train_transform.rotation_degrees=[30,0,0]")  # fmt: skip
        self.max_angles = np.radians(degrees)
        self.scale_range = _range("scale_range", scale_range, low=1e-3)
        self.noise_std = _range("noise_std", noise_std, low=0.0)
        self.brightness_range = _range("brightness_range", brightness_range, low=0.0)
        self.contrast_range = _range("contrast_range", contrast_range, low=0.0)
        self.gamma_range = _range("gamma_range", gamma_range, low=1e-3)
        self.ignore_index = int(ignore_index)

    # --- geometry ------------------------------------------------------------------------------------
    @staticmethod
    def region_size(matrix: np.ndarray, patch_size: Sequence[int]) -> tuple[int, int, int]:
        """The region (D, H, W) centred on a patch of ``patch_size`` that the affine ``matrix`` samples from (one
        voxel of slack per side); each extra over ``patch_size`` is even, so the two share their centre."""
        patch = np.asarray(patch_size, dtype=np.int64)
        extent = np.abs(matrix) @ ((patch - 1) / 2.0)
        size = np.maximum(np.ceil(2 * extent - 1e-9).astype(np.int64) + 3, patch)
        size += (size - patch) % 2
        return tuple(int(n) for n in size)

    def _affine(self, rng: np.random.Generator) -> np.ndarray | None:
        rotate, scale = rng.random() < self.p["rotation"], rng.random() < self.p["scale"]
        angles = [float(rng.uniform(-a, a)) for a in self.max_angles] if rotate else [0.0, 0.0, 0.0]
        factor = float(rng.uniform(*self.scale_range)) if scale else 1.0
        return factor * rotation_matrix(angles) if rotate or scale else None

    def _spatial(self, image: Tensor, mask: Tensor, out: tuple[int, ...], matrix: np.ndarray):
        size = tuple(image.shape[1:])
        axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in out]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # D×H×W×3, (d, h, w)
        source = offsets @ torch.from_numpy(matrix).T + torch.tensor([(n - 1) / 2 for n in size], dtype=torch.float64)
        scale = torch.tensor([2 / (n - 1) if n > 1 else 0.0 for n in size], dtype=torch.float64)
        grid = (source * scale - (scale > 0).double()).flip(-1).float()[None]  # (x, y, z) = (w, h, d) order
        image = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        shifted = (mask.to(torch.float32) + 1)[None, None]  # 0 marks "outside the region"
        sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
        labels = sampled.round().to(torch.int64) - 1
        labels[sampled == 0] = self.ignore_index
        return image, labels

    def _pad(self, image: Tensor, mask: Tensor, size: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        pads = [(n - m) // 2 for n, m in zip(size, image.shape[1:], strict=True)]
        widths = [p for pad in reversed(pads) for p in (pad, pad)]
        return F.pad(image, widths), F.pad(mask, widths, value=self.ignore_index)

    # --- intensities ---------------------------------------------------------------------------------
    def _gamma(self, image: Tensor, rng: np.random.Generator, invert: bool) -> Tensor:
        out = []
        for x in -image if invert else image:
            gamma = _halves(rng, *self.gamma_range)
            mean, std = x.mean(), x.std(unbiased=False)
            low, span = x.min(), x.max() - x.min()
            y = ((x - low) / (span + 1e-7)).clamp_(min=0) ** gamma * (span + 1e-7) + low
            y = (y - y.mean()) / (y.std(unbiased=False) + 1e-8) * std + mean
            out.append(y)
        result = torch.stack(out)
        return -result if invert else result

    def _intensity(self, image: Tensor, rng: np.random.Generator) -> Tensor:
        if rng.random() < self.p["noise"]:
            sigma = float(rng.uniform(*self.noise_std))
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            image = image + sigma * torch.randn(image.shape, generator=generator, dtype=image.dtype)
        if rng.random() < self.p["brightness"]:
            factors = rng.uniform(*self.brightness_range, size=len(image))
            image = image * torch.tensor(factors, dtype=image.dtype).view(-1, 1, 1, 1)
        if rng.random() < self.p["contrast"]:
            channels = []
            for x in image:
                factor, mean = _halves(rng, *self.contrast_range), x.mean()
                channels.append(((x - mean) * factor + mean).clamp(x.min(), x.max()))
            image = torch.stack(channels)
        if rng.random() < self.p["gamma_inverted"]:
            image = self._gamma(image, rng, invert=True)
        if rng.random() < self.p["gamma"]:
            image = self._gamma(image, rng, invert=False)
        return image

    # --- the transform -------------------------------------------------------------------------------
    def __call__(self, sample: dict, region: Callable | None = None, rng: np.random.Generator | None = None):
        """Augment ``sample`` (its image and mask keep their size). ``region(size)`` — given by the dataset — returns
        the ``(image, mask)`` region of ``size`` centred on the patch, read when a rotation or scaling is drawn;
        without it the patch is padded (image 0, mask ``ignore_index``) to that size instead."""
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        image, mask = sample["image"], sample["mask"]
        out = tuple(int(n) for n in image.shape[1:])
        matrix = self._affine(rng)
        if matrix is not None:
            size = self.region_size(matrix, out)
            image, mask = region(size) if region is not None else self._pad(image, mask, size)
            image, mask = self._spatial(image, mask, out, matrix)
        image = self._intensity(image.to(torch.float32), rng)
        flips = [axis for axis in self.flip_axes if rng.random() < self.p["flip"]]
        if flips:
            image, mask = image.flip([a + 1 for a in flips]), mask.flip(flips)
        return {**sample, "image": image.contiguous(), "mask": mask.contiguous()}

    def __repr__(self) -> str:
        return f"VolumeAugment(p={self.p}, rotation_degrees={np.degrees(self.max_angles).tolist()})"
