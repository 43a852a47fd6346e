"""The net as a deployable graph: uint8 images in, logits out (``make export``; :mod:`segloss.export`).

:class:`ExportedNet` wraps a :class:`~segloss.models.module.SegmentationModule`'s net with what the module does
around it at whole-image inference, so that the exported file alone gives ``module.inference`` (mode ``whole``):

* **input** ``image``: uint8 N×C×H×W (RGB, 0–255, as decoded from a PNG/JPEG), any N, H, W;
* **normalisation** ``(x/255 − mean)/std`` folded in, computed as the module computes it for uint8 batches,
  ``x·input_scale + input_shift`` with the module's own buffers (the data config's ``data.normalize``);
* **padding** to the net's stride when it has one (the seed U-Net's 2^depth, smp nets' encoder output stride):
  replicate-padded at the bottom/right and the logits cropped back, the convention of
  :func:`segloss.models.nets.padding.pad_to_multiple`, but with the pad written as ``⌈h/m⌉·m − h``, a shape
  expression the exporters keep symbolic (``pad_to_multiple``'s ``if pad_h or pad_w`` would be frozen at the
  traced size). After it the net's own padding sees a multiple of its stride and does nothing;
* **output** ``logits``: float32 N×C×H×W, the eval-mode main output (auxiliary heads return only it in eval).
  C = 1 for a binary sigmoid net (foreground where logit > log(t/(1−t)), 0 at t = 0.5), one channel per region
  for region nets, else one per class (argmax).

Exporters: ONNX through ``torch.onnx.export(dynamo=True)`` (torch.export, non-strict; the TorchScript-based
exporter, ``dynamo=False``, still runs in torch 2.14 but warns that it will be removed) with batch, height and
width ``Dim.AUTO`` (named Dims refuse the guards the nets add for the traced sample, such as ⌈h/m⌉ ≠ 1, and the
exporter then retries, twice the time) and named ``batch``, ``height``, ``width`` in the file; TorchScript through
``torch.jit.trace`` (deprecated in torch 2.14 but working; the padding is a ``script_if_tracing`` function, so its
shape arithmetic stays in the graph, and the net's own sizes are traced as ``aten::size``). Both trace a batch of
2 (torch.export specialises a size of 1); :func:`parity` proves them dynamic at other sizes and batch sizes.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segloss.errors import ExportParityError
from segloss.models.inference import Inference
from segloss.models.nets.aux_heads import AuxiliaryHeads
from segloss.models.nets.padding import PadToStride
from segloss.models.nets.unet import UNet

INPUT, OUTPUT = "image", "logits"
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")


@torch.jit.script_if_tracing
def pad_up(image: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom/right of N×C×H×W ``image`` to sides that divide by ``multiple`` (pad ⌈s/m⌉·m − s)."""
    height, width = image.shape[-2], image.shape[-1]
    pad_h = (height + multiple - 1) // multiple * multiple - height
    pad_w = (width + multiple - 1) // multiple * multiple - width
    return F.pad(image, [0, pad_w, 0, pad_h], mode="replicate")


def input_multiple(net: nn.Module) -> int:
    """The multiple the net pads its input to (1: it takes any size as it is): ``PadToStride``'s stride (smp nets),
    the seed U-Net's 2^depth; auxiliary heads unwrapped."""
    inner = net.net if isinstance(net, AuxiliaryHeads) else net
    if isinstance(inner, PadToStride):
        return int(inner.stride)
    if isinstance(inner, UNet):
        return 2**inner.depth
    return 1


class ExportedNet(nn.Module):
    """uint8 N×C×H×W → float32 logits N×K×H×W: normalisation, padding, ``net``, crop (module docstring)."""

    def __init__(self, net: nn.Module, input_scale: Tensor, input_shift: Tensor, multiple: int) -> None:
        super().__init__()
        self.net, self.multiple = net, int(multiple)
        self.register_buffer("input_scale", input_scale.detach().clone().float())
        self.register_buffer("input_shift", input_shift.detach().clone().float())

    @classmethod
    def of(cls, module) -> ExportedNet:
        """The exportable net of a 2D ``SegmentationModule`` (eval mode; shares the net's weights)."""
        return cls(module.net, module.input_scale, module.input_shift, input_multiple(module.net)).eval()

    def forward(self, image: Tensor) -> Tensor:
        x = torch.addcmul(self.input_shift, image.float(), self.input_scale)  # as SegmentationModule.forward
        height, width = image.shape[-2], image.shape[-1]
        if self.multiple > 1:
            x = pad_up(x, self.multiple)
        return self.net(x)[..., :height, :width].float()


def sample_input(channels: int) -> Tensor:
    """The example the exporters trace: 2 random uint8 images C×64×96 (sizes other than the parity checks')."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, channels, 64, 96), dtype=torch.uint8, generator=generator)


def export_onnx(net: ExportedNet, path: Path, opset: int, channels: int) -> None:
    """Write ``net`` to ``path`` as one self-contained ONNX file (weights inside: nets under 2 GB) at ``opset``,
    input ``image`` uint8 [batch, C, height, width], output ``logits`` float32 [batch, K, height, width]."""
    auto = torch.export.Dim.AUTO  # named Dims would refuse the guards the nets add (e.g. ⌈h/m⌉ ≠ 1), which hold
    with torch.no_grad(), warnings.catch_warnings(), quiet(EXPORTER_LOGGERS):  # only for the traced sample
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (sample_input(channels),), dynamo=True, opset_version=opset,
                                    input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={INPUT: {0: auto, 2: auto, 3: auto}}, verbose=False)  # fmt: skip
    import onnx_ir as ir

    for value in (program.model.graph.inputs[0], program.model.graph.outputs[0]):  # s40, Min(s73, 4*((s73+3)//4))…
        names = ("batch", None, "height", "width")  # a size the export fixed stays fixed: parity then fails on it
        value.shape = ir.Shape([d if isinstance(d, int) or n is None else n for d, n in zip(value.shape, names)])
    program.save(str(path), external_data=False)


@contextmanager
def quiet(names: tuple[str, ...]) -> Iterator[None]:
    """The exporter's loggers at WARNING for the block (Hydra's logging config shows their INFO lines)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_torchscript(net: ExportedNet, path: Path, channels: int) -> None:
    """Write ``net`` to ``path`` as a traced TorchScript module (``torch.jit.load`` runs it without segloss)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit deprecation notices; tracer warnings: parity proves the sizes
        traced = torch.jit.trace(net, (sample_input(channels),), check_trace=False)
        torch.jit.save(traced, str(path))


def runner(path: Path, fmt: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """``(run, spec)``: ``run(uint8 N×C×H×W array) → float32 logits`` of the exported file (onnxruntime's
    CPUExecutionProvider at its default graph optimisation for ONNX, ``torch.jit.load`` for TorchScript), and
    the file's input/output spec as its runtime reports it."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs()[0], session.get_outputs()[0]
        spec = {"input": {"name": inputs.name, "type": inputs.type, "shape": list(inputs.shape)},
                "output": {"name": outputs.name, "type": outputs.type, "shape": list(outputs.shape)}}  # fmt: skip
        return (lambda images: session.run([outputs.name], {inputs.name: images})[0]), spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(images)).numpy()

    spec = {"input": {"name": INPUT, "type": "uint8", "shape": ["batch", "C", "height", "width"]},
            "output": {"name": OUTPUT, "type": "float32", "shape": ["batch", "K", "height", "width"]}}  # fmt: skip
    return run, spec


def parity(module, run: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray], tolerance: float) -> dict:
    """Every uint8 batch through ``run`` (the exported file) and ``module`` (``whole`` inference, float32): per
    batch its shape, the largest |logit difference| ``max_abs_diff``, the largest |logit| ``max_abs_logit``, their
    ratio ``relative_diff`` = max_abs_diff / max(1, max_abs_logit) and the fraction of pixels whose class
    (``module.to_classes``) agrees; ``passed`` when no ``relative_diff`` exceeds ``tolerance``. The difference is
    scaled because float32 rounding is relative (a net whose logits reach 800 differs by ~5e-4 where one of
    logits ~10 differs by ~5e-6); below 1 it is absolute. Raises :class:`ExportParityError` when the file does not
    run on a batch or gives another shape."""
    whole, checks = Inference("whole"), []
    for images in batches:
        with torch.no_grad():
            expected = whole(module, torch.from_numpy(images)).float()
        try:
            got = torch.from_numpy(np.ascontiguousarray(run(images)))
        except Exception as err:  # the runtime's own error: a fixed axis, a missing op, …
            last = (str(err).strip() or type(err).__name__).splitlines()[-1]  # TorchScript's cause comes last
            raise ExportParityError(f"the exported file fails on a batch of {images.shape}: {last}") from err
        if got.shape != expected.shape:
            raise ExportParityError(f"the exported file gives logits {tuple(got.shape)} for a batch of "
                                    f"{images.shape}; the module gives {tuple(expected.shape)}")  # fmt: skip
        agree = (module.to_classes(got) == module.to_classes(expected)).double().mean()
        diff, scale = float((got - expected).abs().max()), float(expected.abs().max())
        checks.append({"batch": int(images.shape[0]), "height": int(images.shape[2]), "width": int(images.shape[3]),
                       "max_abs_diff": diff, "max_abs_logit": scale, "relative_diff": diff / max(1.0, scale),
                       "labels_agree": float(agree)})  # fmt: skip
    worst = max((c["relative_diff"] for c in checks), key=lambda v: (math.isnan(v), v))  # NaN: the worst
    return {"channels": int(expected.shape[1]), "tolerance": tolerance, "relative_diff": worst,
            "max_abs_diff": max((c["max_abs_diff"] for c in checks), key=lambda v: (math.isnan(v), v)),
            "labels_agree": min(c["labels_agree"] for c in checks), "passed": bool(worst <= tolerance),
            "checks": checks}  # fmt: skip


def decision(module, channels: int) -> dict:
    """How ``channels`` logits become classes: argmax, one sigmoid channel thresholded, or regions."""
    t = module.binary_threshold
    at = f"logit > {math.log(t / (1 - t)):.6g} (sigmoid > {t:g})"
    if module.regions is not None:
        rule = (f"one sigmoid per region, {at}; label map: a pixel takes the label of the last region firing, "
                f"labels {list(module.regions.write)}")  # fmt: skip
        return {"binary": False, "regions": module.regions.as_dict(), "rule": rule}
    if channels == 1:
        return {"binary": True, "regions": None, "rule": f"one sigmoid channel: class 1 where {at}, else 0"}
    return {"binary": False, "regions": None, "rule": "argmax over the channels"}


def not_exported(module) -> list[str]:
    """What the module's inference does beyond whole images, which the exported file does not."""
    inference, notes = module.inference, []
    if inference.mode != "whole":
        notes.append(f"inference.mode={inference.mode} (sliding window): the file infers whole images; "
                     "tile large images yourself and average the logits")  # fmt: skip
    if inference.tta is not None:
        notes.append("inference.tta (test-time augmentation): not in the file")
    if inference.crf is not None:
        notes.append("inference.crf (dense CRF refinement): not in the file")
    return notes
