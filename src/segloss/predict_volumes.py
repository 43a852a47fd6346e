"""``make predict`` on NIfTI volumes (``.nii``, ``.nii.gz``): label maps written as NIfTI on the input's grid.

:mod:`segloss.predict` hands a folder of NIfTI files here (a folder mixing NIfTI and 2D images is refused). Each
volume is read as the MSD datasets read their cases — reoriented to RAS+, laid out ``D×H×W`` with D axial
(:mod:`segloss.data.medical_preprocess`), the modalities of the 4th dimension selected by ``data.dataset.modalities``
— and labelled by the model of one of the two MSD data configs:

* ``data=msd3d`` (:class:`segloss.data.volumes.MSDVolumeDataset`, 3D nets): normalised and resampled to the target
  spacing as the dataset preprocesses a case (:func:`segloss.data.volume_preprocess.preprocess_image`), inferred
  whole with the module's configured inference (the Gaussian sliding window), the class map resampled back to the
  input's grid by nearest neighbour.
* ``data=msd`` (:class:`segloss.data.medical.MSDSliceDataset`, 2D nets): normalised and uint8-encoded as the
  dataset does, each axial slice through ``data.eval_transform`` and the module's inference, ``data.val_batch_size``
  slices a batch, the slices stacked.

Both need the model's **training data** (``data.root``): the train split of the config gives the target spacing
(``spacing: median``) and the CT normalisation statistics (percentiles, mean and std of the training foreground),
so the train-split dataset is built as training built it (``data.cache_dir`` caches it). Region-trained models
(``data.regions``) write their label map through ``module.to_classes`` as in validation.

Output: ``output_dir/<relative folder>/<name>.nii.gz`` (``name`` the file name without ``.nii``/``.nii.gz``),
uint8 labels (int16 beyond 256 classes) in the input's array layout, with its affine, qform/sform codes and
header geometry, so it overlays the input in any viewer. Nothing is overwritten unless ``overwrite=true``;
unreadable volumes are reported together at the end, after the readable ones have been written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from segloss.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, UnreadableImagesError

if TYPE_CHECKING:
    import numpy as np
    import torch

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_DATASET = "segloss.data.volumes.MSDVolumeDataset"
SLICE_DATASET = "segloss.data.medical.MSDSliceDataset"


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def volume_name(path: Path) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (any case)."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_volumes(input_dir: Path, image_extensions: tuple[str, ...]) -> tuple[list[Path], dict[Path, str]]:
    """``(volumes, unusable)``: the NIfTI files under ``input_dir`` (recursively, sorted by relative path) and the
    NIfTI-named entries that are not readable files, each with why. Both empty when the folder holds no NIfTI;
    a :class:`ConfigError` when it also holds 2D images (``image_extensions``)."""
    if not input_dir.is_dir():
        return [], {}  # segloss.predict.find_images names the problem
    entries = sorted(input_dir.rglob("*"), key=lambda p: p.relative_to(input_dir).as_posix())
    candidates = [p for p in entries if is_nifti(p) and not p.is_dir()]
    if not candidates:
        return [], {}
    images = [p for p in entries if p.suffix.lower() in image_extensions and not p.is_dir()]
    if images:
        raise ConfigError(
            f"input_dir={input_dir} mixes NIfTI volumes ({len(candidates)}, e.g. {candidates[0]}) and 2D images "
            f"({len(images)}, e.g. {images[0]}); a run labels one kind: put them in separate folders"
        )
    volumes, unusable = [], {}
    for path in candidates:
        if path.is_file():
            volumes.append(path)
        elif path.is_symlink():
            unusable[path] = f"{path}: a symbolic link to {os.readlink(path)}, which does not exist"
        else:
            unusable[path] = f"{path}: not a regular file"
    return volumes, unusable


def plan_volume_outputs(volumes: list[Path], input_dir: Path, output_dir: Path, overwrite: bool) -> dict[Path, Path]:
    """``{volume: output path}``; refuses collisions (``a.nii`` and ``a.nii.gz``) and, unless ``overwrite``,
    files that already exist, before anything is written."""
    plan, sources = {}, {}
    for volume in volumes:
        relative = volume.relative_to(input_dir)
        target = output_dir / relative.parent / f"{volume_name(volume)}.nii.gz"
        if target in sources:
            raise ConfigError(f"{sources[target]} and {volume} would both be written to {target}; rename one")
        sources[target] = volume
        plan[volume] = target
    refuse_existing(list(sources), overwrite)
    return plan


def refuse_existing(targets: list[Path], overwrite: bool) -> None:
    """Stop before writing anything when an output file exists already (unless ``overwrite``): a
    :class:`ConfigError` naming the first and how many (2D images and volumes alike)."""
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists ({len(existing)} of the {len(targets)} output files do); "
            "choose another output_dir or pass overwrite=true"
        )


def volume_kind(cfg: DictConfig) -> str:
    """``"3d"`` for data=msd3d, ``"slices"`` for data=msd; a :class:`ConfigError` for any other data config."""
    target = OmegaConf.select(cfg, "data.dataset._target_")
    if target == VOLUME_DATASET:
        return "3d"
    if target == SLICE_DATASET:
        return "slices"
    raise ConfigError(
        f"input_dir holds NIfTI volumes but the data config's dataset is {target}: NIfTI input needs a model trained "
        "on an MSD data config (data=msd3d for 3D nets, data=msd for 2D slice nets; pass the training's experiment)"
    )


def training_dataset(cfg: DictConfig):
    """The train-split dataset of ``cfg.data``, built as the datamodule builds it (what gives the target spacing
    and the CT statistics); a :class:`ConfigError` naming the need when the training data is missing."""
    from segloss.utils.config import instantiate

    datamodule = instantiate(cfg.data, "data")
    try:
        datamodule.prepare_data()
        return datamodule.dataset(root=datamodule.root, split=datamodule.splits["train"], transform=None)
    except (DatasetNotFoundError, DatasetFormatError) as err:
        raise ConfigError(
            f"labelling NIfTI volumes needs the model's training data at data.root={datamodule.root}: its train "
            "split gives the target spacing and the intensity normalisation (CT percentiles, mean and std of the "
            "training foreground) the model was trained with. Point data.root (or paths.data_dir) at the training "
            f"task, as in the training run. The problem: {err}"
        ) from err


def to_input_grid(labels: np.ndarray, reference) -> np.ndarray:
    """Labels D×H×W in display orientation on the input's (Z, Y, X) grid → the input file's array layout: the
    inverse of ``medical_preprocess.to_display`` after ``nibabel.as_closest_canonical``."""
    import nibabel as nib
    import numpy as np

    ras = np.ascontiguousarray(labels.transpose(2, 1, 0)[::-1, ::-1])  # to_display: flip X, Y; transpose
    ornt = nib.orientations.io_orientation(reference.affine)  # input axes → RAS, as as_closest_canonical reads them
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(ras, back))


def write_labels(path: Path, labels: np.ndarray, reference, num_classes: int) -> None:
    """``labels`` (the input's array layout) as NIfTI with ``reference``'s affine, qform/sform and header."""
    import nibabel as nib
    import numpy as np

    dtype = np.uint8 if num_classes <= 256 else np.int16
    header = reference.header.copy()
    image_class = type(reference) if isinstance(reference, nib.Nifti1Image) else nib.Nifti1Image
    out = image_class(labels.astype(dtype), reference.affine, header=header)
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1.0, 0.0)
    out.header["cal_min"], out.header["cal_max"] = 0, num_classes - 1
    for get, put in ((reference.get_qform, out.set_qform), (reference.get_sform, out.set_sform)):
        matrix, code = get(coded=True)
        if matrix is not None:
            put(matrix, int(code))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(out, str(tmp))
    os.replace(tmp, path)


class VolumeLabeller:
    """Labels one NIfTI volume with ``module`` as the train-split ``dataset`` (3D or slices) preprocesses cases."""

    def __init__(self, cfg: DictConfig, kind: str, dataset, module, device: torch.device, dtype=None) -> None:
        self.kind, self.dataset, self.module, self.device, self.dtype = kind, dataset, module, device, dtype
        self.modalities, self.channels = dataset.task.modalities, dataset.channels
        self.batch = int(cfg.data.get("val_batch_size") or cfg.data.get("batch_size") or 1)
        self.transform = None
        if kind == "slices":
            from segloss.utils.config import instantiate

            node = cfg.data.get("eval_transform")
            self.transform = instantiate(node, "data.eval_transform") if node else None
            if self.transform is None:
                raise ConfigError("data.eval_transform is not set: prediction normalises slices as evaluation does")

    def read(self, path: Path) -> tuple[np.ndarray, tuple]:
        """Raw float32 C×D×H×W (display orientation, selected modalities) and (z, y, x) spacing; a
        :class:`DatasetFormatError` naming the file when it cannot be read."""
        from segloss.data.volume_preprocess import read_image_volume

        return read_image_volume(path, self.modalities, self.channels)

    def __call__(self, image: np.ndarray, spacing) -> np.ndarray:
        """Class indices D×H×W (int64, display orientation) on the raw grid of ``image`` (C×D×H×W)."""
        return self.volume(image, spacing) if self.kind == "3d" else self.slices(image)

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def volume(self, image: np.ndarray, spacing) -> np.ndarray:
        import numpy as np
        import torch

        from segloss.data.volume_preprocess import preprocess_image, resample_labels

        ds = self.dataset
        raw_shape = image.shape[1:]
        ready = preprocess_image(image, spacing, ds.intensity_stats, ds.zscore_mask, ds.target_spacing)
        with torch.no_grad(), self._autocast():
            batch = torch.from_numpy(ready).unsqueeze(0).to(self.device)
            classes = self.module.inference.classes(self.module, batch, self.module.to_classes)[0]
        return resample_labels(classes.cpu().numpy().astype(np.int64), raw_shape)

    def slices(self, image: np.ndarray) -> np.ndarray:
        import numpy as np
        import torch

        from segloss.data import medical_preprocess as mp

        ds = self.dataset
        encoded = mp.encode_uint8(mp.normalise(np.ascontiguousarray(image.transpose(1, 0, 2, 3)),
                                               ds.intensity_stats), ds.z_clip)  # fmt: skip
        encoded = encoded[:, ds._channel_index]  # Z×3×H×W, as MSDSliceDataset.__getitem__ pads the channels
        depth, height, width = encoded.shape[0], encoded.shape[2], encoded.shape[3]
        out = np.zeros((depth, height, width), dtype=np.int64)
        mask = torch.zeros((height, width), dtype=torch.int64)  # the joint transform wants one; unused
        for start in range(0, depth, self.batch):
            raw = [torch.from_numpy(np.ascontiguousarray(s)) for s in encoded[start : start + self.batch]]
            normalised = torch.stack([self.transform({"image": s, "mask": mask, "name": ""})["image"] for s in raw])
            if normalised.shape[-2:] != (height, width):
                raise ConfigError(
                    f"data.eval_transform changed the slice size ({height}×{width} → "
                    f"{tuple(normalised.shape[-2:])}); prediction needs a normalising-only eval transform"
                )
            with torch.no_grad(), self._autocast():
                crf = {"rgb": torch.stack(raw).to(self.device).float()} if self.module.inference.crf is not None else {}
                classes = self.module.inference.classes(self.module, normalised.to(self.device),
                                                        self.module.to_classes, **crf)  # fmt: skip
            out[start : start + len(raw)] = classes.cpu().numpy()
        return out


@dataclass
class VolumeJob:
    """What :func:`prepare_volumes` checked and built: the model kind, the train-split dataset and the plan."""

    kind: str
    dataset: object
    plan: dict[Path, Path]
    output_dir: Path
    unusable: dict[Path, str] = field(default_factory=dict)


def prepare_volumes(
    cfg: DictConfig, input_dir: Path, output_dir: Path, volumes: list[Path], unusable: dict[Path, str]
) -> VolumeJob:
    """The checks and the training-data reference before any model is built: the output plan (nothing
    overwritten unless ``overwrite=true``), the data config's kind, the config, the train-split dataset."""
    if not volumes:
        raise UnreadableImagesError(unusable, [], output_dir)
    if cfg.get("overlay"):
        raise ConfigError("overlay=true draws on 2D images; NIfTI label maps overlay their input in any viewer")
    plan = plan_volume_outputs(volumes, input_dir, output_dir, bool(cfg.get("overwrite")))
    kind = volume_kind(cfg)
    from segloss.checks import check_config  # imports torch: after the quick folder checks

    check_config(cfg)
    return VolumeJob(kind, training_dataset(cfg), plan, output_dir, dict(unusable))


def label_volumes(cfg: DictConfig, job: VolumeJob, device: torch.device, dtype=None) -> dict:
    """Build the net, load the checkpoint and write the label maps of ``job`` on ``device`` (autocast to ``dtype``
    if given). Returns ``{"written": label files, "overlays": [], "failed": []}``; raises
    :class:`UnreadableImagesError` at the end, naming each unreadable volume, when some could not be read (the
    readable ones are written first)."""
    import rich
    from rich.progress import track

    from segloss.build import build_module, without_named_class_weights
    from segloss.data import medical_preprocess as mp
    from segloss.utils.checkpoints import load_weights
    from segloss.utils.precision import set_matmul_precision
    from segloss.utils.threads import configure_threads

    set_matmul_precision(cfg.get("float32_matmul_precision"), device.type)
    configure_threads(cfg, announce=lambda message: print(f"segloss: {message}", flush=True))
    module = build_module(without_named_class_weights(cfg), with_optimizer=False)
    load_weights(module, cfg.ckpt_path)
    module.to(device).eval()
    labeller = VolumeLabeller(cfg, job.kind, job.dataset, module, device, dtype)
    nib = mp.nibabel()

    plan, output_dir, written, failures = job.plan, job.output_dir, [], dict(job.unusable)
    start = time.perf_counter()
    for path in track(list(plan), description="predicting volumes", transient=True):
        try:
            image, spacing = labeller.read(path)
            reference = nib.load(str(path))
        except DatasetFormatError as err:
            failures[path] = str(err)  # names the file and the reader's complaint
            continue
        labels = labeller(image, spacing)
        write_labels(plan[path], to_input_grid(labels, reference), reference, int(cfg.data.num_classes))
        written.append(plan[path])

    seconds = time.perf_counter() - start
    rich.print(
        f"[bold]predict[/]: {len(written)} of {len(plan) + len(job.unusable)} volumes labelled "
        f"({'3D' if job.kind == '3d' else '2D slices'}, {module.inference}, {device}, {dtype or 'float32'}) → "
        f"{output_dir}; {len(written) / seconds:.2f} volumes/s"
    )
    if failures:
        raise UnreadableImagesError(failures, written, output_dir)
    return {"written": written, "overlays": [], "failed": [], "volumes_per_s": len(written) / seconds}
