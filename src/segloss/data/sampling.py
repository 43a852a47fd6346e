"""Samplers and the loader that make training data a pure function of (seed, epoch, position).

Exact resume and world-size-independent data need three things that torch's defaults do not give:

* **The order** of epoch ``e`` is ``randperm(N)`` from a generator seeded with ``(seed, e)``, cut to a
  multiple of the *global* batch ``B`` (``drop_last``) and dealt round-robin to the ``W`` ranks: rank
  ``r`` takes positions ``r, r+W, r+2W, …``. Its ``k``-th batch of ``B/W`` items is therefore a share of
  positions ``[kB, (k+1)B)`` of the permutation, and the union over ranks of step ``k`` is the same
  global batch for every world size (torch's ``DistributedSampler`` pads the list instead, so the
  last global batches change with ``W``).
* **The augmentation** of an item is drawn from RNGs seeded with ``(seed, epoch, index)`` just for
  that item (:class:`SeededItems`), not from whatever state a worker process happens to be in: the
  same crops and flips for any ``num_workers`` and world size, and after a resume.
* **The position**: :class:`ResumableLoader` reports how many batches of the epoch it has handed
  out (Lightning stores this in the checkpoint through the ``state_dict`` protocol, and no batch is
  pre-fetched for sized loaders) and, once restored, skips exactly those batches' indices — no
  image of them is read.

Validation and test use :class:`ShardSampler` without shuffling and without padding, so under DDP
every image is scored exactly once (a padded ``DistributedSampler`` would count some twice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segloss.utils.seeding import mix_seed, seeded_rngs


class ShardSampler(DistributedSampler):
    """Indices of this rank's share of the dataset, round-robin, never padded.

    With ``shuffle`` (training) it yields ``(index, item_seed)`` pairs for :class:`SeededItems`, the
    permutation of epoch ``e`` coming from ``mix_seed(seed, e)``; ``global_batch`` cuts it to whole
    global batches. Without ``shuffle`` (evaluation) it yields plain indices ``rank, rank+W, …`` —
    ranks may get one item more or less, and no item is repeated.

    A subclass of ``DistributedSampler`` only so that Lightning keeps it instead of inserting its own.
    """

    def __init__(
        self,
        length: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        global_batch: int | None = None,
    ) -> None:
        # DistributedSampler.__init__ would query torch.distributed; everything is set here instead.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.global_batch = global_batch
        self.drop_last = global_batch is not None
        self._resume: tuple[int, int] | None = None  # (epoch, items of this rank to skip)

    def _usable(self) -> int:
        if self.global_batch is None:
            return self.length
        return self.length // self.global_batch * self.global_batch

    def __len__(self) -> int:
        usable = self._usable()
        return len(range(self.rank, usable, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, epoch: int, items: int) -> None:
        """The next pass over ``epoch`` starts after its first ``items`` items of this rank."""
        self._resume = (epoch, items)

    def __iter__(self) -> Iterator:
        skip = 0
        if self._resume is not None:
            epoch, items = self._resume
            skip = items if epoch == self.epoch else 0
            self._resume = None
        usable = self._usable()
        if not self.shuffle:
            yield from range(self.rank + skip * self.num_replicas, usable, self.num_replicas)
            return
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=generator)[:usable]
        for index in order[self.rank :: self.num_replicas][skip:].tolist():
            yield index, mix_seed(self.seed, self.epoch, index)


class SeededItems(Dataset):
    """``dataset`` whose ``[(index, seed)]`` draws the item's random transforms from RNGs seeded with
    ``seed`` (python, numpy, torch; restored afterwards); ``[index]`` is a plain item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            with seeded_rngs(seed):
                return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name: str):  # CLASS_NAMES, save_prediction, … of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexedItems(Dataset):
    """``dataset`` whose items also carry ``"index"``, their position in the split: the evaluation identifies
    each image by it (per-image counts, under DDP too), so no one re-derives positions from the sampler."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}

    def __getattr__(self, name: str):  # CLASS_NAMES, save_prediction, … of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ShardSampler` that can stop and resume mid-epoch.

    ``state_dict()`` = ``{"epoch", "batches"}``: the batches of the current epoch handed out so far.
    ``load_state_dict()`` makes the next pass start right after them (or at the next epoch when the
    epoch was complete). Lightning saves and restores this with the loop state of a checkpoint.
    With another sampler (Lightning swaps in a sequential one for ``overfit_batches``) it counts
    batches but cannot skip them.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._batches = 0, 0

    def __iter__(self):
        sampler = self.sampler
        self._epoch, self._batches = getattr(sampler, "epoch", 0), 0
        resume = getattr(sampler, "_resume", None)
        if resume and resume[0] == self._epoch:
            self._batches = resume[1] // self.batch_size
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        if not isinstance(sampler, ShardSampler):
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # the epoch was complete: the next pass is the next epoch
            epoch, batches = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip_next(epoch, batches * self.batch_size)
        self._epoch, self._batches = epoch, batches
