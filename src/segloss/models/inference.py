"""Inference at evaluation time: whole images or a sliding window (MMSegmentation's ``slide`` mode).

Sliding window over an H×W image with window (h, w) and stride (s_h, s_w): the window origins along
an axis are ``y_i = min(i·s_h, H − h)`` for i = 0 … ⌈max(H − h, 0) / s_h⌉ (the last window is moved
back so it ends at the border; windows never leave the image when it is at least the window's size,
and an image smaller than the window is inferred whole along that axis). The logits of overlapping
windows are summed and divided by the number of windows covering each pixel, i.e. **logits are
averaged** (not probabilities), as MMSegmentation's ``slide_inference`` does. The Cityscapes recipe is
window 512×1024, stride 341×683 (3 × 3 windows on a 1024×2048 frame).

``tta`` averages the logits of test-time views (:func:`tta_logits`: the image rescaled and flipped, each view's
logits brought back to the original size), around whichever mode computes a view's logits, before the CRF.

``crf`` refines the logits of either mode with DeepLab's fully connected CRF (:mod:`segloss.models.crf`):
``inference.crf=true`` (DeepLab-v2's parameters) or a mapping of CRF parameters. The CRF's log-marginals log Q
replace the logits (val/test loss, NLL and ECE are then those of Q), and it needs the batch's RGB image in
[0, 255] (``rgb=``; :meth:`segloss.models.module.SegmentationModule.rgb`). With ``slide``, :meth:`Inference.classes`
then computes the whole image's logits and applies the CRF to them (the CRF couples pixels across bands), so
it no longer bounds the memory by one band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from segloss.errors import ConfigError
from segloss.models.crf import DenseCRF
from segloss.models.sliding import gaussian_sliding_window

MODES = ("whole", "slide", "gaussian")


def window_origins(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of length ``size`` (see module docstring)."""
    if window >= size:
        return [0]
    steps = -(-(size - window) // stride)  # ceil
    return [min(i * stride, size - window) for i in range(steps + 1)]


def slide_inference(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
    window_batch: int = 1,
) -> Tensor:
    """Logits N×C×H×W of ``forward`` applied to windows of ``image`` (N×3×H×W), averaged in overlaps.
    ``window_batch`` windows go through ``forward`` at once (a batch of window_batch·N crops): fewer,
    larger calls, which keep a GPU busy; the logits are those of one window at a time."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    height, width = image.shape[-2:]
    n = image.shape[0]
    origins = [
        (y, x) for y in window_origins(height, crop_h, stride_h) for x in window_origins(width, crop_w, stride_w)
    ]
    logits = count = None
    for start in range(0, len(origins), max(1, window_batch)):
        group = origins[start : start + max(1, window_batch)]
        out = forward(torch.cat([image[..., y : y + crop_h, x : x + crop_w] for y, x in group])).float()
        if logits is None:
            logits = out.new_zeros((n, out.shape[1], height, width))
            count = out.new_zeros((1, 1, height, width))
        for i, (y, x) in enumerate(group):
            logits[..., y : y + crop_h, x : x + crop_w] += out[i * n : (i + 1) * n]
            count[..., y : y + crop_h, x : x + crop_w] += 1
    return logits / count


def slide_classes(
    forward: Callable[[Tensor], Tensor],
    image: Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
    classes: Callable[[Tensor], Tensor],
    window_batch: int = 1,
) -> Tensor:
    """``classes(slide_inference(…))`` (N×H×W) with memory bounded by one band of windows instead of the
    whole image's logits: the windows are taken band by band (one row of window origins at a time), and the
    rows that no later band covers are turned into classes and their logits dropped. The sums and counts of
    every pixel are those of :func:`slide_inference` in the same order, so the classes are identical; for an
    8000×8000 image and 19 classes the logits held fall from 4.9 GB to the band's (``crop_h``·W·C floats)."""
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    height, width = image.shape[-2:]
    n, band_h = image.shape[0], min(crop_h, height)
    rows, cols = window_origins(height, crop_h, stride_h), window_origins(width, crop_w, stride_w)
    out_classes = torch.empty((n, height, width), dtype=torch.int64, device=image.device)
    logits = count = None
    top = 0  # the image row that buffer row 0 holds
    for j, y in enumerate(rows):
        if logits is not None and y > top:  # shift the buffer down to start at row y
            shift = y - top
            logits = torch.cat([logits[..., shift:, :], logits.new_zeros((*logits.shape[:2], shift, width))], 2)
            count = torch.cat([count[..., shift:, :], count.new_zeros((1, 1, shift, width))], 2)
        top = y
        for start in range(0, len(cols), max(1, window_batch)):
            group = cols[start : start + max(1, window_batch)]
            out = forward(torch.cat([image[..., y : y + crop_h, x : x + crop_w] for x in group])).float()
            if logits is None:
                logits = out.new_zeros((n, out.shape[1], band_h, width))
                count = out.new_zeros((1, 1, band_h, width))
            for i, x in enumerate(group):
                logits[..., :, x : x + crop_w] += out[i * n : (i + 1) * n]
                count[..., :, x : x + crop_w] += 1
        done = (rows[j + 1] if j + 1 < len(rows) else height) - y  # rows no later band reaches
        out_classes[:, y : y + done] = classes(logits[..., :done, :] / count[..., :done, :])
    return out_classes


def tta_logits(logits_of: Callable[[Tensor], Tensor], image: Tensor, scales: Sequence[float], flip: bool) -> Tensor:
    """Test-time augmentation (MMSegmentation's ``SegTTAModel`` semantics): the logits of every view — the image
    resized by each of ``scales`` (bilinear, ``align_corners=False``), and with ``flip`` also mirrored left-right —
    brought back to the original size (bilinear; a flipped view flipped back) and averaged, float32. The two views
    of a scale go through ``logits_of`` together (one batch of 2N); views of different sizes cannot share a batch.
    A uint8 image (``data.normalize_on_device``) is resized as float and rounded back to uint8."""
    height, width = image.shape[-2:]
    total, views = None, 0
    for scale in scales:
        x = image
        if scale != 1:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            x = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else x.to(image.dtype)
        n = x.shape[0]
        out = logits_of(torch.cat([x, x.flip(-1)]) if flip else x).float()
        out = out[:n] + out[n:].flip(-1) if flip else out
        if scale != 1:
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False)
        total = out if total is None else total + out
        views += 2 if flip else 1
    return total / views


def check_tta(tta) -> tuple[tuple[float, ...], bool] | None:
    """``inference.tta``: null/false (off), true (flip at scale 1) or ``{scales: [...], flip: bool}``."""
    if tta is None or tta is False:
        return None
    if tta is True:
        return (1.0,), True
    if not hasattr(tta, "get") or set(tta) - {"scales", "flip"}:
        raise ConfigError.value("inference.tta", tta, "null, true or {scales: [s, …], flip: true|false}",
                                "inference.tta='{scales:[0.75,1.0,1.25],flip:true}'")  # fmt: skip
    scales, flip = tta.get("scales", [1.0]), tta.get("flip", True)
    if not scales or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in scales):
        raise ConfigError.value("inference.tta.scales", scales, "a list of positive factors", "[0.75,1.0,1.25]")
    if not isinstance(flip, bool):
        raise ConfigError.value("inference.tta.flip", flip, "true or false", "inference.tta.flip=true")
    return tuple(float(v) for v in scales), flip


def check_gaussian(patch_size, step, mirror_axes) -> None:
    """The settings of ``inference.mode=gaussian`` (ConfigErrors naming the key)."""
    if patch_size is None or len(patch_size) not in (2, 3) or min(patch_size) <= 0:
        raise ConfigError(
            f"inference.mode=gaussian needs inference.patch_size=[d, h, w] (or [h, w]) with positive sizes, got "
            f"{patch_size} (e.g. the training patch, ${{data.dataset.patch_size}})"
        )
    if not isinstance(step, int | float) or isinstance(step, bool) or not 0 < step <= 1:
        raise ConfigError.value("inference.step", step, "a fraction of the patch in (0, 1]", "inference.step=0.5")
    if any(not isinstance(a, int) or not 0 <= a < len(patch_size) for a in mirror_axes):
        axes = f"spatial axes in [0, {len(patch_size)})"
        raise ConfigError.value("inference.mirror_axes", list(mirror_axes), axes, "inference.mirror_axes=[0,1,2]")


class Inference:
    """``Inference(mode="whole" | "slide" | "gaussian", crop_size=(h, w), stride=(s_h, s_w), window_batch=k,
    patch_size=…, step=0.5, mirror_axes=(), crf=None)``: how evaluation turns an image batch into logits.
    ``whole`` runs the net once on the full image; ``slide`` runs it on windows, ``window_batch`` of them per call,
    averaging the logits; ``gaussian`` is nnU-Net's sliding window for 2D images or 3D volumes (windows of
    ``patch_size`` every ``step``·patch, blended with a Gaussian importance map, σ = patch/8, mirrored over every
    flip of the spatial axes ``mirror_axes`` — :func:`segloss.models.sliding.gaussian_sliding_window`).
    ``crf`` (None/false: off; true: DeepLab-v2's parameters; a mapping or a :class:`DenseCRF`: those) refines the
    logits with mean-field inference of the fully connected CRF, which needs ``rgb`` (N×3×H×W in [0, 255]) in
    :meth:`__call__` and :meth:`classes` (2D images only).

    Raises:
        ConfigError: a wrong mode, window, patch, step, mirror axis, ``window_batch``, TTA or CRF parameter, or the
            CRF or TTA on volumes; the message names the key (``inference.crf.<key>`` for the CRF's).
    """

    def __init__(
        self,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        window_batch: int = 1,
        crf: bool | dict | DenseCRF | None = None,
        patch_size: Sequence[int] | None = None,
        step: float = 0.5,
        mirror_axes: Sequence[int] = (),
        tta: bool | dict | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"inference.mode={mode!r}: choose one of {MODES}")
        if mode == "gaussian":
            check_gaussian(patch_size, step, mirror_axes)
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.step, self.mirror_axes = float(step), tuple(mirror_axes)
        if mode == "slide":
            for name, value in (("crop_size", crop_size), ("stride", stride)):
                if value is None or len(value) != 2 or min(value) <= 0:
                    raise ConfigError(
                        f"inference.mode=slide needs inference.{name}=[h, w] with positive sizes, got {value}"
                    )
            if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
                raise ConfigError(
                    f"inference.stride={list(stride)} is larger than inference.crop_size={list(crop_size)}: "
                    "some pixels would never be predicted; use a stride ≤ the window"
                )
        if not isinstance(window_batch, int) or window_batch < 1:
            raise ConfigError(f"inference.window_batch={window_batch!r}: give a positive number of windows per call")
        self.mode, self.window_batch = mode, window_batch
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.stride = tuple(stride) if stride is not None else None
        self.crf = DenseCRF.from_config(crf)
        self.tta = check_tta(tta)
        if self.tta is not None and self.patch_size is not None and len(self.patch_size) == 3:
            raise ConfigError("inference.tta resizes and flips 2D images; volumes mirror with inference.mirror_axes "
                              "instead: set inference.tta=null")  # fmt: skip
        if self.crf is not None and self.patch_size is not None and len(self.patch_size) == 3:
            raise ConfigError(
                "inference.crf=true refines 2D images by their RGB colours; volumes (inference.mode=gaussian with a "
                "3-D patch_size) cannot take it: set inference.crf=false"
            )

    def __call__(self, forward: Callable[[Tensor], Tensor], image: Tensor, rgb: Tensor | None = None) -> Tensor:
        """Logits N×C×H×W of ``image`` (averaged over the test-time views with ``tta``); with the CRF on, its
        log-marginals log Q given the image ``rgb``."""
        if self.tta is not None:
            logits = tta_logits(lambda x: self._logits(forward, x), image, *self.tta)
        else:
            logits = self._logits(forward, image)
        if self.crf is None:
            return logits
        if rgb is None:
            raise ValueError(
                "inference.crf is on but no image was given to compare colours: call inference(forward, image, "
                "rgb=N×3×H×W in [0, 255]) (SegmentationModule.rgb(image) undoes the normalisation)"
            )
        return self.crf(logits, rgb)

    def _logits(self, forward: Callable[[Tensor], Tensor], image: Tensor) -> Tensor:
        """The logits of the mode (whole, slide or gaussian), without test-time views or CRF."""
        if self.mode == "gaussian":
            logits = gaussian_sliding_window(
                forward, image, self.patch_size, self.step, self.window_batch, self.mirror_axes
            )
        elif self.mode == "whole":
            logits = forward(image)
        else:
            logits = slide_inference(forward, image, self.crop_size, self.stride, self.window_batch)
        return logits

    def classes(
        self, forward: Callable[[Tensor], Tensor], image: Tensor, to_classes: Callable, rgb: Tensor | None = None
    ) -> Tensor:
        """Class indices N×H×W; with ``slide`` and no CRF, never holding the whole image's logits
        (:func:`slide_classes`); with the CRF, ``to_classes`` of :meth:`__call__`'s refined logits."""
        if self.crf is not None or self.tta is not None or self.mode == "gaussian":
            return to_classes(self(forward, image, rgb))
        if self.mode == "whole":
            return to_classes(forward(image))
        return slide_classes(forward, image, self.crop_size, self.stride, to_classes, self.window_batch)

    def __repr__(self) -> str:
        extra = (
            f", crop_size={self.crop_size}, stride={self.stride}, window_batch={self.window_batch}"
            if self.mode == "slide"
            else ""
        )
        if self.mode == "gaussian":
            extra = (f", patch_size={self.patch_size}, step={self.step}, mirror_axes={self.mirror_axes}, "
                     f"window_batch={self.window_batch}")  # fmt: skip
        if self.tta is not None:
            extra += f", tta=(scales={list(self.tta[0])}, flip={self.tta[1]})"
        if self.crf is not None:
            extra += f", crf={self.crf}"
        return f"Inference(mode={self.mode!r}{extra})"


def to_classes(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Class indices N×H×W of N×C×H×W logits: the argmax for C ≥ 2; for one sigmoid channel (C = 1, binary)
    foreground (1) where σ(z) > ``threshold``, i.e. where z > log(t / (1 − t)) — z > 0 at the usual 0.5."""
    if logits.shape[1] != 1:
        return logits.argmax(1)
    return (logits[:, 0] > math.log(threshold / (1 - threshold))).long()


def predict_indices(module, transform, image: Tensor, device: torch.device, dtype=None):
    """Class indices H×W (uint8 numpy) of one uint8 3×H×W image through ``module.inference`` (normalised by
    ``transform``: :func:`segloss.utils.normalisation.normalise_image`), under autocast to ``dtype`` if given."""
    from segloss.utils.normalisation import normalise_image

    normalised = normalise_image(transform, image)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        crf = {"rgb": image.unsqueeze(0).to(device).float()} if module.inference.crf is not None else {}
        classes = module.inference.classes(module, normalised.unsqueeze(0).to(device), module.to_classes, **crf)
    return classes[0].to(torch.uint8).cpu().numpy()
