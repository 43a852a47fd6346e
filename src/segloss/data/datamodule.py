"""``SegmentationDataModule``: one DataModule for every dataset class with ``Dataset(root, split, transform)``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from segloss.data import device_augment
from segloss.data.sampling import IndexedItems, ResumableLoader, SeededItems, ShardSampler
from segloss.errors import ConfigError
from segloss.utils import consumer_rules
from segloss.utils.label_space import check_class_names
from segloss.utils.regions import regions_from_config
from segloss.utils.rules import Rule, require_all


class PadCollate:
    """Batch items of different sizes (VOC, Kvasir, MSD tasks whose cases differ in-plane) by padding
    images with 0 (the mean, after normalisation) and masks with ``ignore_index`` at the bottom/right,
    so padded pixels count in no loss or metric; ``batch["size"]`` (N×2) keeps each item's own
    (H, W). Same-size items are simply stacked. Predictions on a padded item can differ slightly
    near its border from whole-image inference: evaluate with batch size 1 where that matters.
    Volumes (images C×D×H×W, masks D×H×W: :mod:`segloss.data.volumes`) are padded likewise along D, H and W,
    with ``batch["size"]`` N×3.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def __call__(self, items: list[dict]) -> dict:
        if "augment" in items[0]:  # data.augment_on_device: source regions + their sampling parameters
            return device_augment.collate(items)
        if items[0]["image"].dim() == 4:  # C×D×H×W volumes (segloss.data.volumes)
            return self._volumes(items)
        sizes = [tuple(item["image"].shape[-2:]) for item in items]
        if len(set(sizes)) == 1:
            return default_collate(items)
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        rest = default_collate([{k: v for k, v in item.items() if k not in ("image", "mask")} for item in items])
        first_image, first_mask = items[0]["image"], items[0]["mask"]
        images = first_image.new_zeros((len(items), *first_image.shape[:-2], height, width))
        masks = first_mask.new_full((len(items), *first_mask.shape[:-2], height, width), self.ignore_index)
        for i, (item, (h, w)) in enumerate(zip(items, sizes, strict=True)):  # one copy per item
            images[i, ..., :h, :w] = item["image"]
            masks[i, ..., : item["mask"].shape[-2], : item["mask"].shape[-1]] = item["mask"]
        return {**rest, "image": images, "mask": masks, "size": torch.tensor(sizes)}

    def _volumes(self, items: list[dict]) -> dict:
        """Volumes C×D×H×W (masks D×H×W) padded at the far end of each axis; ``size`` is N×3 (D, H, W)."""
        sizes = [tuple(item["image"].shape[-3:]) for item in items]
        if len(set(sizes)) == 1:
            return default_collate(items)
        shape = tuple(max(size[axis] for size in sizes) for axis in range(3))
        rest = default_collate([{k: v for k, v in item.items() if k not in ("image", "mask")} for item in items])
        images = items[0]["image"].new_zeros((len(items), items[0]["image"].shape[0], *shape))
        masks = items[0]["mask"].new_full((len(items), *shape), self.ignore_index)
        for i, (item, (d, h, w)) in enumerate(zip(items, sizes, strict=True)):
            images[i, :, :d, :h, :w] = item["image"]
            masks[i, :d, :h, :w] = item["mask"]
        return {**rest, "image": images, "mask": masks, "size": torch.tensor(sizes)}


class SegmentationDataModule(L.LightningDataModule):
    """Builds train/val(/test) datasets from ``root`` and serves batches of the segloss contract
    ``{"image": float N×3×H×W, "mask": int64 N×H×W, "name": [str]}``.

    Args:
        dataset: a dataset factory ``dataset(root=, split=, transform=)`` (a Hydra ``_partial_``).
        root: the dataset folder.
        num_classes, class_names, ignore_index: the label space (checked against the dataset class).
        train_transform / eval_transform: joint transforms (see :mod:`segloss.data.transforms`).
        batch_size: the **global** training batch: under DDP each of the ``W`` processes loads
            ``batch_size / W`` items (a :class:`ConfigError` when ``W`` does not divide it), so a config
            means the same optimisation on 1 or 8 devices. ``val_batch_size`` (global too) defaults to it.
        seed: seeds the training order and each item's augmentation (:mod:`segloss.data.sampling`);
            ``null`` takes the run's seed (``PL_GLOBAL_SEED``, set by ``seed_everything``).
        splits: names of the train, val and (optional) test splits on disk.
        generator: optional object with ``ensure(root)`` that creates a synthetic dataset when missing.
        normalize_on_device: read by the transforms' configs (``${data.normalize_on_device}``): batches
            carry uint8 images that the module normalises on its device.
        augment_on_device: read by the training transform's config (``${data.augment_on_device}``): the
            loader cuts uint8 source regions and :meth:`on_after_batch_transfer` scales, crops, flips,
            jitters and normalises them on the model's device (:mod:`segloss.data.device_augment`).
        normalize: ``{mean, std}``, the one normalisation of the data (``data.normalize``): read by the
            transforms' configs (``${data.normalize.mean}``) and by the module (``segloss.build``), not here.
        regions: overlapping regions of the label space (``data.regions``, BraTS-style): the masks stay label maps;
            the module trains one sigmoid per region (``segloss.utils.regions``). Checked here against the label
            space, so a wrong definition stops before any model is built.
    """

    # The rules of the data config's values: applied here, declared in utils.consumer_rules (read by checks).
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.DATAMODULE

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        root: str,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        splits: dict[str, str | None] | None = None,
        generator=None,
        seed: int | None = None,
        normalize_on_device: bool = False,
        augment_on_device: bool = False,
        normalize: dict | None = None,
        regions: dict | None = None,
    ) -> None:
        super().__init__()
        require_all(self.RULES, dict(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers,
                                     num_classes=num_classes, ignore_index=ignore_index, class_names=class_names,
                                     normalize_on_device=normalize_on_device,
                                     augment_on_device=augment_on_device))  # fmt: skip
        check_class_names(class_names, num_classes)
        self.regions = regions_from_config(regions, num_classes) if regions else None
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"ignore_index={ignore_index} is a valid class id for num_classes={num_classes}; "
                "use a value outside [0, num_classes), e.g. 255"
            )
        self.dataset, self.root, self.generator = dataset, Path(root).expanduser(), generator
        self.num_classes, self.class_names, self.ignore_index = num_classes, list(class_names), ignore_index
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.loader_kwargs = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.splits = {"train": "train", "val": "val", "test": None, **(splits or {})}
        self.datasets: dict[str, Dataset] = {}
        self.seed, self.normalize_on_device, self.augment_on_device = seed, normalize_on_device, augment_on_device
        if augment_on_device and not isinstance(train_transform, device_augment.DeviceAugmentation):
            raise ConfigError(
                "data.augment_on_device=true but data.train_transform is not segloss.data.transforms."
                f"train_transform with augment_on_device=${{data.augment_on_device}} (got {train_transform!r}); "
                "add augment_on_device: ${data.augment_on_device} to the train_transform node"
            )
        self._train_loader: ResumableLoader | None = None
        self._loader_state: dict | None = None  # position restored from a checkpoint, applied once
        # Evaluation shards are not padded, so a rank may get no batch when there are more ranks than images.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def prepare_data(self) -> None:
        if self.generator is not None:
            self.generator.ensure(self.root)

    def verify(self) -> None:
        """Fail now, with the dataset's own message, if the data is missing or malformed — or too small
        to give one training batch (whole global batches only, so it would train nothing)."""
        self.prepare_data()
        self.setup("fit")
        images = len(self.datasets["train"])
        if images < self.batch_size:
            raise ConfigError(
                f"the training split ({self.splits['train']!r} under {self.root}) has {images} image(s), fewer than "
                f"data.batch_size={self.batch_size}: every epoch keeps whole batches only, so no training step "
                f"would run. Lower data.batch_size (e.g. data.batch_size={max(images, 1)}) or add images"
            )
        if len(self.datasets["val"]) == 0:
            raise ConfigError(f"the validation split ({self.splits['val']!r} under {self.root}) holds no image")

    def _build(self, stage: str, transform: Callable | None) -> Dataset:
        if stage not in self.datasets:
            self.datasets[stage] = self.dataset(root=self.root, split=self.splits[stage], transform=transform)
            names = getattr(self.datasets[stage], "CLASS_NAMES", None)
            if names is not None and len(names) != self.num_classes:
                raise ConfigError(
                    f"data.num_classes={self.num_classes} but {type(self.datasets[stage]).__name__} has "
                    f"{len(names)} classes; fix data.num_classes/class_names"
                )
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._build("train", self.train_transform)
        if stage in (None, "fit", "validate"):
            self._build("val", self.eval_transform)
        if stage in (None, "test"):
            if self.splits["test"] is None:
                raise ConfigError(
                    f"the data config for {self.root} has no test split (data.splits.test is null); "
                    "set data.splits.test to a labelled split, or evaluate with split=val"
                )
            self._build("test", self.eval_transform)

    def world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device(self, global_batch: int, world_size: int, name: str = "data.batch_size") -> int:
        """``global_batch / world_size``, or a :class:`ConfigError` when it does not divide."""
        if global_batch < 1 or global_batch % world_size:
            raise ConfigError(
                f"{name}={global_batch} is the global batch and must be a positive multiple of the "
                f"{world_size} processes (trainer.devices × trainer.num_nodes); e.g. {name}="
                f"{max(1, round(global_batch / world_size)) * world_size}"
            )
        return global_batch // world_size

    def check_world_size(self, world_size: int, train: bool = True) -> None:
        """Fail before any process starts when the global batch sizes (the training one only with
        ``train``) do not split over ``world_size``."""
        if train:
            self.per_device(self.batch_size, world_size)
        self.per_device(self.val_batch_size, world_size, "data.val_batch_size")

    def _seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _loader(self, stage: str, global_batch: int, train: bool) -> DataLoader:
        world_size, rank = self.world()
        name = "data.batch_size" if train else "data.val_batch_size"
        batch_size = self.per_device(global_batch, world_size, name)
        dataset = self.datasets[stage]
        shard = {"shuffle": True, "seed": self._seed(), "global_batch": global_batch} if train else {}
        sampler = ShardSampler(len(dataset), world_size, rank, **shard)
        loader = ResumableLoader if train else DataLoader
        return loader(
            SeededItems(dataset) if train else IndexedItems(dataset),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,
            collate_fn=PadCollate(self.ignore_index),
            **self.loader_kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", self.batch_size, train=True)
        if self._loader_state is not None:
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self._train_loader = loader
        return loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches of ``augment_on_device`` are augmented here, on the model's device."""
        if isinstance(batch, dict) and "augment" in batch:
            return device_augment.augment_batch(batch, self.train_transform)
        return batch

    def state_dict(self) -> dict:
        """The training loader's position (epoch, batches handed out), saved in every checkpoint."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next training loader starts where the checkpoint's left off. (Lightning restores
        the DataModule before it first asks for the loader — unlike its own loader-state path, which
        ``estimated_stepping_batches`` makes run too late.)"""
        self._loader_state = state.get("train_loader")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, train=False)
