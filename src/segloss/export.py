"""Export a trained net for deployment: ``python -m segloss.export ckpt_path=… [format=onnx|torchscript] [output=…]``.

The net is built from the config (the training's experiment) and the checkpoint loaded safely, as ``segloss.predict``
does; :class:`segloss.models.exported.ExportedNet` folds in what the module does around the net at whole-image
inference, so the file takes **uint8 RGB images N×3×H×W** (0–255, as decoded; any batch and size) and returns the
**float32 logits N×K×H×W**, the data config's ``(x/255 − mean)/std`` and the padding to the net's stride inside.
K = 1 for a binary sigmoid net (foreground where logit > 0 at ``model.binary_threshold=0.5``), one per region for
region nets, else one per class (argmax). Sliding windows, TTA and the CRF are not exported (a note says so);
3D nets are refused (their input is a volume the dataset resampled and z-scored, not an image).

* ``format=onnx``: ``torch.onnx.export(dynamo=True)``, torch's default exporter since 2.9 (``dynamo=False`` still
  runs in 2.14 but is marked for removal), at ``opset=20``: onnxruntime 1.32 runs ai.onnx opsets 7–28 (29 is refused
  as unreleased), torch 2.14 writes 18–23 (torchlib is written at 18 and converted up) with 20 as its default, the
  most exercised conversion; later opsets change the ops these nets use (Conv, ConvTranspose, Pad, Resize, Slice,
  Cast …) only by new tensor types (bfloat16, int4, float8), and opset 20 also runs on onnxruntime ≥ 1.17.
* ``format=torchscript``: ``torch.jit.trace`` (deprecated in torch 2.14, still supported), for ``torch.jit.load``.

The file is written under a temporary name in the target folder and renamed (``os.replace``) once the **parity
check** passed; an existing output is never replaced unless ``overwrite=true``. The check runs the written file
(onnxruntime's CPUExecutionProvider, or ``torch.jit.load``) and the module (float32, no autocast, ``whole``
inference) on the same uint8 images: ``parity_images`` validation images of the data config when they are on disk,
else as many random ones of 3×128×192 (seed 0), in batches of 2 when of one size; then 2 (3 when the first batch
holds 2) random images of 75×101 — another batch and size than the traced example (2 × 64×96), dividing by no
stride, which proves the dynamic axes and the padding. It prints the largest |logit difference|, the same relative
to the logits' scale, max(1, max |logit|), and the fraction of pixels whose class agrees, and fails (exit 2, nothing
written) when the relative difference exceeds ``tolerance`` = 1e-3. Float32 rounding is relative (unit roundoff
6e-8) and the two runtimes sum the convolutions in different orders: measured differences are 5e-7–1.3e-5 of the
logit scale (docs/export.md), while a missing normalisation, padding or eval-mode BatchNorm moves logits by a
sizeable fraction of their scale. ``<output>.json`` records the format, opset, input/output spec, normalisation,
classes and palette, parity figures, versions and the checkpoint's path and sha256.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from importlib.util import find_spec
from pathlib import Path

import hydra
import rich
from omegaconf import DictConfig, open_dict

from segloss.errors import ConfigError, ExportParityError, SeglossError
from segloss.utils.config import CONFIG_DIR, report_user_errors, set_environment
from segloss.utils.rich_output import config_tree

set_environment()

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
OPSETS = range(18, 24)  # what torch 2.14's ONNX exporter writes (onnxruntime 1.32 runs 7–28)
RANDOM_SIZE, SECOND_SIZE = (128, 192), (75, 101)
PARITY_BATCH = 2  # images of one size per parity batch: > 1 proves the batch axis, 2 bounds the memory of large frames


def check_options(cfg: DictConfig) -> dict:
    """The export options, each checked (a :class:`ConfigError` naming the key)."""
    if not cfg.get("ckpt_path"):
        raise ConfigError("no ckpt_path given: run `make export CKPT=file.ckpt [FORMAT=onnx|torchscript]`")
    fmt = cfg.get("format", "onnx")
    if fmt not in SUFFIXES:
        raise ConfigError.value("format", fmt, "onnx or torchscript", "format=torchscript")
    opset = cfg.get("opset", 20)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in OPSETS:
        raise ConfigError.value("opset", opset, f"an ONNX opset from {OPSETS[0]} to {OPSETS[-1]}", "opset=20")
    images = cfg.get("parity_images", 4)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigError.value("parity_images", images, "a number of images ≥ 1", "parity_images=4")
    tolerance = cfg.get("tolerance", 1e-3)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance > 0:
        raise ConfigError.value("tolerance", tolerance, "a positive logit difference", "tolerance=1e-3")
    return {"format": fmt, "opset": opset, "parity_images": images, "tolerance": float(tolerance)}


def output_paths(cfg: DictConfig, fmt: str) -> tuple[Path, Path]:
    """``(file, file.json)``: ``output``, or ``<ckpt stem><suffix>`` next to the checkpoint; existing ones are
    refused unless ``overwrite``."""
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    target = Path(cfg.output).expanduser().resolve() if cfg.get("output") else ckpt.with_suffix(SUFFIXES[fmt])
    if target.is_dir():
        raise ConfigError(f"output={target} is a folder; name the file to write, e.g. output={target / 'net'}"
                          f"{SUFFIXES[fmt]}")  # fmt: skip
    meta = target.with_name(target.name + ".json")
    existing = [p for p in (target, meta) if p.exists()]
    if existing and not cfg.get("overwrite", False):
        raise ConfigError(f"{existing[0]} already exists; pass overwrite=true to replace it (and its .json), "
                          "or choose another output=…")  # fmt: skip
    return target, meta


def check_runtime(fmt: str) -> None:
    """format=onnx needs onnx, onnxscript and onnxruntime (the ``export`` extra)."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if fmt == "onnx" and find_spec(name) is None]
    if missing:
        raise ConfigError(f"format=onnx needs {', '.join(missing)}: pip install 'segloss[export]' "
                          "(or export with format=torchscript)")  # fmt: skip


def for_export(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` that builds the module as exported: on the CPU, float32, not compiled."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if cfg.get("trainer") is not None:
            cfg.trainer.accelerator, cfg.trainer.precision = "cpu", "32-true"
        cfg.model.compile = False
    return cfg


def parity_batches(cfg: DictConfig, count: int, channels: int) -> tuple[str, list]:
    """``(where from, [uint8 arrays N×C×H×W])``: up to ``count`` validation images of the data config (read as
    the module's uint8 batches are, ``data.normalize_on_device``; consecutive ones of one size in batches of
    :data:`PARITY_BATCH`), else random ones; then the random batch of :data:`SECOND_SIZE` (module docstring)."""
    import numpy as np

    from segloss.utils.config import instantiate

    images, source = [], None
    uint8 = copy.deepcopy(cfg)
    with open_dict(uint8):
        uint8.data.normalize_on_device = True
    try:
        datamodule = instantiate(uint8.data, "data")
        datamodule.setup("validate")
        dataset = datamodule.datasets["val"]
        for index in range(min(count, len(dataset))):
            image = dataset[index]["image"]
            if image.dtype.is_floating_point or image.dim() != 3:
                break
            images.append(image.numpy())
        source = f"{len(images)} validation image(s) of {datamodule.root}" if images else None
    except (SeglossError, OSError) as err:
        why = type(err).__name__
        rich.print(f"export: no validation images under data.root={cfg.data.get('root')} ({why}): random ones instead")
    rng = np.random.default_rng(0)
    if not images:
        images = list(rng.integers(0, 256, (count, channels, *RANDOM_SIZE), dtype=np.uint8))
        source = f"{count} random image(s) {channels}×{RANDOM_SIZE[0]}×{RANDOM_SIZE[1]} (seed 0)"
    batches = []
    for image in images:
        if batches and batches[-1][-1].shape == image.shape and len(batches[-1]) < PARITY_BATCH:
            batches[-1].append(image)
        else:
            batches.append([image])
    batches = [np.stack(batch) for batch in batches]
    second = 3 if len(batches[0]) == 2 else 2
    batches.append(rng.integers(0, 256, (second, channels, *SECOND_SIZE), dtype=np.uint8))
    return source, batches


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict:
    """The versions that wrote and checked the file."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("segloss", "torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def build(cfg: DictConfig):
    """The module of ``cfg`` with the checkpoint's weights, on the CPU in float32, eval mode; 3D nets refused."""
    from segloss.checks import check_config

    check_config(cfg)  # before Lightning is imported: a mistake costs ~2 s
    from segloss.build import build_module, without_named_class_weights
    from segloss.utils.checkpoints import load_weights
    from segloss.utils.threads import configure_threads

    configure_threads(cfg, announce=lambda message: print(f"segloss: {message}", flush=True))
    module = build_module(without_named_class_weights(cfg), with_optimizer=False)
    load_weights(module, cfg.ckpt_path)
    module.to("cpu").float().eval()
    if any(p.dim() == 5 for p in module.net.parameters()):
        raise ConfigError("this is a 3D (volume) net: its input is a volume resampled and z-scored by the dataset "
                          "and its inference a Gaussian sliding window, neither of which an exported net holds; "
                          "label volumes with `make predict` instead")  # fmt: skip
    return module


def write_checked(cfg: DictConfig, module, options: dict, target: Path) -> tuple[dict, dict, int]:
    """Export to a temporary file next to ``target``, run the parity check on it, rename it to ``target`` when
    it passes: ``(runtime spec, parity figures, padding multiple)``; nothing is left behind when it fails."""
    from segloss.models.exported import ExportedNet, export_onnx, export_torchscript, parity, runner

    fmt, channels = options["format"], int(module.input_scale.shape[1])
    net = ExportedNet.of(module)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary.touch()
        except OSError as err:
            raise ConfigError(f"output={target}: cannot write there ({err.strerror}); choose output=… in a folder "
                              "you can write to") from err  # fmt: skip
        if fmt == "onnx":
            export_onnx(net, temporary, options["opset"], channels)
        else:
            export_torchscript(net, temporary, channels)
        run, spec = runner(temporary, fmt)
        source, batches = parity_batches(cfg, options["parity_images"], channels)
        figures = {"images": source, **parity(module, run, batches, options["tolerance"])}
        engine = f"onnxruntime {versions()['onnxruntime']} CPU" if fmt == "onnx" else "torch.jit.load"
        for check in figures["checks"]:
            shape = f"{check['batch']}×{channels}×{check['height']}×{check['width']}"
            rich.print(f"parity ({engine} vs PyTorch float32), {shape}: max |Δlogit| {check['max_abs_diff']:.3g} "
                       f"(|logit| ≤ {check['max_abs_logit']:.3g}: relative {check['relative_diff']:.2g}), classes "
                       f"agree on {100 * check['labels_agree']:.3f} %")  # fmt: skip
        if not figures["passed"]:
            raise ExportParityError(
                f"the exported file's logits differ from the module's by up to {figures['max_abs_diff']:.3g} "
                f"(relative to the logits' scale {figures['relative_diff']:.3g}, more than tolerance="
                f"{options['tolerance']:g}) on {source}; nothing was written"
            )
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):  # also where the folder could not be made
            temporary.unlink(missing_ok=True)
    return spec, figures, net.multiple


def metadata(cfg: DictConfig, module, options: dict, name: str, spec: dict, figures: dict, multiple: int) -> dict:
    """What ``<output>.json`` records: the file's format, input/output spec, normalisation, padding, classes (names,
    palette, how logits become classes), what is not exported, the parity figures, versions and checkpoint."""
    from segloss.models.exported import decision, not_exported
    from segloss.utils.visualize import class_palette

    fmt, channels, classes = options["format"], int(module.input_scale.shape[1]), figures.pop("channels")
    if fmt == "torchscript":  # no runtime to ask: the shapes the parity check ran
        spec["input"]["shape"], spec["output"]["shape"] = (["batch", n, "height", "width"] for n in (channels, classes))
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    return {
        "format": fmt, "file": name, "opset": options["opset"] if fmt == "onnx" else None,
        "exporter": "torch.onnx.export(dynamo=True)" if fmt == "onnx" else "torch.jit.trace",
        "input": {**spec["input"], "layout": "N×C×H×W", "channels": "RGB", "range": [0, 255]},
        "output": {**spec["output"], "layout": "N×K×H×W", "channels": classes, "meaning": "logits"},
        "normalisation": {"formula": "(x / 255 - mean) / std, per channel, inside the file",
                          "mean": module.input_mean, "std": module.input_std},
        "padding": {"multiple": multiple, "mode": "replicate, bottom/right, logits cropped back (inside)"
                    if multiple > 1 else "none: the net takes any size"},
        "num_classes": module.num_classes, "class_names": list(module.class_names),
        "palette": [list(colour) for colour in class_palette(cfg)[: module.num_classes]],
        "binary_threshold": module.binary_threshold, **decision(module, classes),
        "not_exported": not_exported(module), "parity": figures, "versions": versions(),
        "checkpoint": {"path": str(ckpt), "sha256": sha256(ckpt)},
    }  # fmt: skip


def export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt_path``'s net, check its parity and write ``<output>.json``; returns that metadata
    (with ``"path"`` and ``"metadata"``). Raises :class:`ConfigError` (options, existing output, 3D net) or
    :class:`segloss.errors.ExportParityError` (the file does not give the module's logits; nothing is
    written)."""
    options = check_options(cfg)
    fmt = options["format"]
    target, meta = output_paths(cfg, fmt)
    check_runtime(fmt)
    if cfg.get("print_config", False):
        rich.print(config_tree(cfg))
    cfg = for_export(cfg)
    module = build(cfg)  # imports torch: after the quick checks
    from segloss.models.exported import not_exported

    for note in not_exported(module):
        rich.print(f"[yellow]note[/]: {note}")
    spec, figures, multiple = write_checked(cfg, module, options, target)
    data = metadata(cfg, module, options, target.name, spec, figures, multiple)
    written = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    written.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(written, meta)
    opset, size = f", opset {options['opset']}" if fmt == "onnx" else "", target.stat().st_size / 2**20
    rich.print(f"[bold]export[/]: {target} ({fmt}{opset}, {size:.1f} MiB): uint8 images in, "
               f"{data['output']['channels']} logit channel(s) out; relative |Δlogit| "
               f"{data['parity']['relative_diff']:.2g} ≤ {options['tolerance']:g}; metadata {meta.name}")  # fmt: skip
    return {**data, "path": target, "metadata": meta}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        export(cfg)


if __name__ == "__main__":
    main()
