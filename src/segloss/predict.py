"""Label a folder of images: ``python -m segloss.predict ckpt_path=… input_dir=… output_dir=… [overlay=true]``.

Every image under ``input_dir`` (recursively; .png .jpg .jpeg .tif .tiff .bmp in any case, sorted) is
normalised as the data config's eval transform does, run through the net with the configured
inference (``inference=slide`` for large images) and written as ``output_dir/<relative path>.png``: a
palette PNG whose pixel values are the class indices (viewers show the palette colours). With
``overlay=true`` also ``<stem>_overlay.png``, the image blended 50 % with the class colours.

The net is built from the config (the same experiment as training) and the checkpoint's weights are
loaded with ``torch.load(weights_only=True)``. The data config is read for ``num_classes``, the
palette and the normalisation only, so no dataset needs to be on disk. Nothing is overwritten unless
``overwrite=true``; unreadable images are collected and reported together at the end, after the
readable ones have been written. torch and the model code are imported only once the folders have
been checked, so a wrong folder or an existing output is reported at once.

A folder of NIfTI volumes (.nii, .nii.gz) is labelled by :mod:`segloss.predict_volumes` instead (models of
data=msd3d or data=msd; this needs their training data), written as ``<name>.nii.gz`` label maps on the
input's grid; a folder mixing NIfTI and 2D images is refused.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import rich
from omegaconf import DictConfig

from segloss.errors import ConfigError, UnreadableImagesError
from segloss.utils.config import CONFIG_DIR, report_user_errors, set_environment
from segloss.utils.rich_output import config_tree

if TYPE_CHECKING:
    import torch

set_environment()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
OVERLAY_SUFFIX = "_overlay"


def find_images(input_dir: Path) -> tuple[list[Path], dict[Path, str]]:
    """``(images, unusable)``: the image files under ``input_dir`` (recursively, sorted by relative path),
    and the entries with an image extension that are not readable files — a symbolic link to a missing file,
    a FIFO, … — each with why (reported with the unreadable images: nothing is dropped silently)."""
    accepted = " ".join(IMAGE_EXTENSIONS)
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir={input_dir} is not a folder; give a folder of images ({accepted})")
    candidates = sorted(
        (p for p in input_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()),
        key=lambda p: p.relative_to(input_dir).as_posix(),
    )
    images, unusable = [], {}
    for path in candidates:
        if path.is_file():
            images.append(path)
        elif path.is_symlink():
            unusable[path] = f"{path}: a symbolic link to {os.readlink(path)}, which does not exist"
        else:
            unusable[path] = f"{path}: not a regular file"
    if not images and not unusable:
        raise ConfigError(f"input_dir={input_dir} holds no images (searched recursively for {accepted})")
    return images, unusable


def plan_outputs(images: list[Path], input_dir: Path, output_dir: Path, overlay: bool, overwrite: bool) -> dict:
    """``{image: (mask path, overlay path or None)}``; refuses collisions and, unless ``overwrite``,
    files that already exist, before anything is written."""
    plan, sources = {}, {}
    for image in images:
        mask = (output_dir / image.relative_to(input_dir)).with_suffix(".png")
        extra = mask.with_name(f"{mask.stem}{OVERLAY_SUFFIX}.png") if overlay else None
        for target in (mask, extra):
            if target is None:
                continue
            if target in sources:
                raise ConfigError(f"{sources[target]} and {image} would both be written to {target}; rename one")
            sources[target] = image
        plan[image] = (mask, extra)
    from segloss.predict_volumes import refuse_existing

    refuse_existing(list(sources), overwrite)
    return plan


def choose_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def autocast_dtype(cfg: DictConfig, device: torch.device):
    """The autocast dtype of the run's precision on ``device`` (``trainer.precision``, ``auto`` resolved as
    training resolves it): bfloat16 for bf16, float16 for 16 (CUDA only), None for full precision."""
    from segloss.utils.precision import resolve_precision

    precision, _ = resolve_precision(cfg.trainer.get("precision", "auto"), "gpu" if device.type == "cuda" else "cpu")
    if precision.startswith("bf16"):
        import torch

        return torch.bfloat16
    if precision.startswith("16") and device.type == "cuda":
        import torch

        return torch.float16
    return None


def predict(cfg: DictConfig) -> dict:
    """Label every image of ``cfg.input_dir`` into ``cfg.output_dir``.

    Returns ``{"written": mask files, "overlays": overlay files, "failed": []}`` (one mask per image).
    Raises :class:`UnreadableImagesError` at the end, naming each unreadable image, when some could not
    be read (the readable ones are written first).
    """
    for key in ("ckpt_path", "input_dir", "output_dir"):
        if not cfg.get(key):
            raise ConfigError(f"no {key} given: run `make predict CKPT=file.ckpt INPUT=folder OUTPUT=folder`")
    if cfg.get("print_config", False):
        rich.print(config_tree(cfg))
    input_dir = Path(cfg.input_dir).expanduser().resolve()
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise ConfigError(f"output_dir={output_dir} is inside input_dir={input_dir}; choose a folder outside it")
    for candidate in (output_dir, *output_dir.parents):  # a file there fails the first write, after the model
        if candidate.exists():
            if not candidate.is_dir():
                raise ConfigError(f"output_dir={output_dir} is not a folder: {candidate} is a file; give a folder")
            break
    from segloss.predict_volumes import find_volumes, label_volumes, prepare_volumes  # NIfTI: their own path

    volumes, broken = find_volumes(input_dir, IMAGE_EXTENSIONS)
    if volumes or broken:
        job = prepare_volumes(cfg, input_dir, output_dir, volumes, broken)
        device = choose_device(str(cfg.get("device", "auto")))
        return label_volumes(cfg, job, device, autocast_dtype(cfg, device))
    images, unusable = find_images(input_dir)
    if not images:
        raise UnreadableImagesError(unusable, [], output_dir)
    plan = plan_outputs(images, input_dir, output_dir, bool(cfg.get("overlay")), bool(cfg.get("overwrite")))
    from segloss.checks import check_config  # imports torch: after the quick folder checks

    check_config(cfg)
    if int(cfg.data.num_classes) > 256:
        raise ConfigError(f"data.num_classes={cfg.data.num_classes}: palette PNGs hold at most 256 classes")
    return label_images(cfg, plan, output_dir, unusable)


def label_images(cfg: DictConfig, plan: dict, output_dir: Path, unusable: dict | None = None) -> dict:
    """Build the net, load the checkpoint and write the files of ``plan`` (see :func:`predict`) through
    ``Trainer.predict``: the images read and normalised by the loader (:mod:`segloss.data.image_folder`),
    ``batch_size`` of one size at a time through the configured inference under the run's precision, each
    batch written by :class:`segloss.callbacks.folder_writer.FolderWriter`; with several devices
    (``trainer=ddp|ddp_cpu``) each process labels its own share. The inputs of ``unusable`` are counted and
    reported with the unreadable ones."""
    from lightning.pytorch.utilities import rank_zero_only
    from omegaconf import open_dict

    from segloss.build import build_module, build_trainer, without_named_class_weights
    from segloss.callbacks.folder_writer import FolderWriter
    from segloss.data.image_folder import ImageFolderData
    from segloss.utils.checkpoints import load_weights
    from segloss.utils.cluster import launch_rank
    from segloss.utils.config import instantiate
    from segloss.utils.visualize import class_palette

    rank_zero_only.rank = launch_rank()
    device = choose_device(str(cfg.get("device", "auto")))
    with open_dict(cfg):  # device=cpu|cuda picks the Trainer's accelerator; auto leaves trainer.accelerator
        if str(cfg.get("device", "auto")) != "auto":
            cfg.trainer.accelerator = "gpu" if device.type == "cuda" else "cpu"
        cfg.trainer.use_distributed_sampler = False  # ImageFolderData deals the batches to the processes
        cfg.trainer.enable_model_summary = False
    module = build_module(without_named_class_weights(cfg), with_optimizer=False)
    load_weights(module, cfg.ckpt_path)
    node = cfg.data.get("eval_transform")
    transform = instantiate(node, "data.eval_transform") if node else None
    if transform is None:
        raise ConfigError("data.eval_transform is not set: prediction normalises images as evaluation does")
    paths = list(plan)
    writer = FolderWriter([plan[path] for path in paths], class_palette(cfg))
    data = ImageFolderData(paths, transform, int(cfg.get("batch_size", 1)), int(cfg.get("num_workers", 0)))
    trainer = build_trainer(cfg, [], [writer])
    start = time.perf_counter()
    with warnings.catch_warnings():  # Lightning's note on custom batch samplers: FixedBatches returns every image
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        trainer.predict(module, datamodule=data, return_predictions=False)
    seconds = time.perf_counter() - start  # reading, inference and writing
    written, overlays, failed = gathered(trainer, writer)

    failures = dict(unusable or {})
    failures.update({paths[i]: reason for i, reason in sorted(failed.items())})
    written_paths = [plan[paths[i]][0] for i in sorted(written)]
    overlay_paths = [plan[paths[i]][1] for i in sorted(overlays)]
    inputs = len(plan) + len(unusable or {})
    if trainer.is_global_zero:
        rich.print(
            f"[bold]predict[/]: {len(written_paths)} of {inputs} images labelled ({module.inference}, "
            f"{trainer.precision}, {trainer.world_size} process(es), batch_size={data.batch_size}) "
            f"→ {output_dir}"
            + (f" (with {len(overlay_paths)} overlays)" if overlay_paths else "")
            + f"; {len(written_paths) / seconds:.2f} frames/s"
        )
    if failures and trainer.is_global_zero:
        raise UnreadableImagesError(failures, written_paths, output_dir)
    return {
        "written": written_paths,
        "overlays": overlay_paths,
        "failed": [],
        "frames_per_s": len(written_paths) / seconds,
    }


def gathered(trainer, writer) -> tuple[list[int], list[int], dict[int, str]]:
    """What every process's writer wrote and could not read (indices into the plan), on every process."""
    parts = [(writer.written, writer.overlays, writer.failed)]
    if trainer.world_size > 1:
        import torch.distributed as dist

        parts = [None] * trainer.world_size
        dist.all_gather_object(parts, (writer.written, writer.overlays, writer.failed))
    written = [i for part in parts for i in part[0]]
    overlays = [i for part in parts for i in part[1]]
    failed = {i: reason for part in parts for i, reason in part[2].items()}
    return written, overlays, failed


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        predict(cfg)


if __name__ == "__main__":
    main()
