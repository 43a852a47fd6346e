"""The images of a folder as a prediction loader (``make predict``): read and normalised in the loader's
workers, batched by size, each process of a multi-device run given its own share.

Batches hold images of one size where the file headers say so (PIL reads only the header): consecutive images
of equal size, in the sorted order of the folder, up to ``batch_size`` per batch. The images stay a list in the
batch (``SegmentationModule.predict_step`` stacks those of equal size), so a header that misstates the size
costs speed, never correctness. An unreadable image becomes an ``error`` entry of its batch, reported with
the others at the end; it does not stop the run.

Sharding: batches are dealt round-robin to the processes (batch ``b`` to rank ``b mod world_size``), so each
image is predicted exactly once — Lightning's ``DistributedSampler`` pads the last round with repeats, which
would write some files twice. A process left without a batch (fewer batches than processes) gets one empty
batch, since Lightning refuses a loader of length zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as L
from torch.utils.data import DataLoader, Dataset, Sampler

from segloss.errors import ConfigError, DatasetFormatError
from segloss.utils.normalisation import normalise_image


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file header, or None where the header cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def size_batches(sizes: Sequence[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Runs of consecutive indices with one header size, cut every ``batch_size``; an unknown size alone."""
    batches: list[list[int]] = []
    for index, size in enumerate(sizes):
        last = batches[-1] if batches else None
        if last is not None and size is not None and sizes[last[0]] == size and len(last) < batch_size:
            last.append(index)
        else:
            batches.append([index])
    return batches


class ImageFolderDataset(Dataset):
    """Item ``i``: ``{"index": i, "image": normalised C×H×W, "rgb": uint8 C×H×W}``, or ``{"index", "error"}``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[dict], dict]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from segloss.data.image_io import read_image

        try:
            rgb = read_image(self.paths[index])
        except DatasetFormatError as err:
            return {"index": index, "error": str(err)}  # names the file and the decoder's complaint
        image = normalise_image(self.transform, rgb)
        return {"index": index, "image": image, "rgb": rgb}


def collate_items(items: list[dict]) -> dict:
    """``{"index": [...], "image": [...], "rgb": [...], "failed": {index: reason}}``; the images stay a list."""
    good = [item for item in items if "error" not in item]
    return {
        "index": [item["index"] for item in good],
        "image": [item["image"] for item in good],
        "rgb": [item["rgb"] for item in good],
        "failed": {item["index"]: item["error"] for item in items if "error" in item},
    }


class FixedBatches(Sampler):
    """The batches given, in their order (a batch sampler Lightning can wrap to track the indices)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageFolderData(L.LightningDataModule):
    """The predict loader over ``paths`` (see the module docstring); the Trainer must run with
    ``use_distributed_sampler=False`` so that the round-robin share stays as it is."""

    def __init__(self, paths: Sequence[Path], transform, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}: give a positive number of images per batch")
        self.dataset = ImageFolderDataset(paths, transform)
        self.batches = size_batches([header_size(p) for p in self.dataset.paths], int(batch_size))
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return DataLoader(
            self.dataset,
            batch_sampler=FixedBatches(self.batches[rank::world] or [[]]),  # Lightning wants ≥ 1 batch per process
            collate_fn=collate_items,
            num_workers=self.num_workers,
        )
