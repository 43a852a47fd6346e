"""Training order, per-item seeds and loader positions (segloss.data.sampling)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from segloss.data.sampling import ResumableLoader, SeededItems, ShardSampler
from segloss.utils.seeding import mix_seed


def _global_batches(length: int, batch: int, world: int, epoch: int = 0) -> list[set[int]]:
    """The set of indices of each optimizer step, over all ranks."""
    per_rank = []
    for rank in range(world):
        sampler = ShardSampler(length, world, rank, shuffle=True, seed=7, global_batch=batch)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        per_rank.append([keys[i : i + batch // world] for i in range(0, len(keys), batch // world)])
    steps = len(per_rank[0])
    assert all(len(r) == steps for r in per_rank), "ranks must take the same number of steps"
    return [{index for r in per_rank for index, _ in r[k]} for k in range(steps)]


@pytest.mark.parametrize("length", [96, 101, 13])
def test_every_world_size_sees_the_same_global_batches(length):
    one = _global_batches(length, 8, 1)
    assert len(one) == length // 8
    assert _global_batches(length, 8, 2) == one
    assert _global_batches(length, 8, 4) == one
    assert _global_batches(length, 8, 1, epoch=1) != one  # a new order each epoch


def test_item_seeds_depend_on_seed_epoch_and_index_only():
    a = dict(ShardSampler(20, 1, 0, shuffle=True, seed=3, global_batch=4))
    b = {}
    for rank in range(2):
        b.update(dict(ShardSampler(20, 2, rank, shuffle=True, seed=3, global_batch=4)))
    assert a == b and a[5] == mix_seed(3, 0, 5)
    assert len(set(a.values())) == len(a)


@pytest.mark.parametrize("length,world", [(13, 2), (12, 5), (3, 4)])
def test_evaluation_shards_cover_every_item_exactly_once(length, world):
    shards = [list(ShardSampler(length, world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    # torch's DistributedSampler pads with repeats: the double counting the un-padded shards avoid.
    padded = [list(DistributedSampler(range(length), world, rank, shuffle=False)) for rank in range(world)]
    assert sum(map(len, padded)) > length or length % world == 0


class _RandomItems(Dataset):
    """Each item is a draw from torch's global RNG (as a random augmentation would be)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), float(torch.rand(()))])


def _loader(num_workers: int = 0) -> ResumableLoader:
    sampler = ShardSampler(24, 1, 0, shuffle=True, seed=1, global_batch=4)
    return ResumableLoader(SeededItems(_RandomItems()), batch_size=4, sampler=sampler, num_workers=num_workers)


def test_augmentation_draws_do_not_depend_on_workers_or_global_rng():
    torch.manual_seed(0)
    serial = torch.cat(list(_loader(0)))
    torch.manual_seed(123)  # another global state must not matter
    parallel = torch.cat(list(_loader(2)))
    assert torch.equal(serial, parallel)
    state = torch.get_rng_state()
    items = SeededItems(_RandomItems())
    assert torch.equal(items[(3, 99)], items[(3, 99)]) and not torch.equal(items[(3, 99)], items[(3, 98)])
    assert torch.equal(state, torch.get_rng_state())  # the item seeding leaves the global RNG alone


def test_loader_resumes_mid_epoch_and_after_a_complete_epoch():
    full = _loader()
    full.sampler.set_epoch(2)
    batches = list(full)
    interrupted = _loader()
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    for _ in range(2):
        next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    resumed = _loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, batches[2:]))
    assert resumed.state_dict() == {"epoch": 2, "batches": len(batches)}
    after = _loader()
    after.load_state_dict({"epoch": 2, "batches": len(batches)})  # the epoch was complete
    assert after.sampler.epoch == 3 and len(list(after)) == len(batches)


def test_evaluation_batches_carry_each_image_position_under_any_world():
    """The evaluation reads each image's position from its batch (IndexedItems), not from the sampler's rule."""
    from torch.utils.data import DataLoader

    from segloss.data.datamodule import PadCollate
    from segloss.data.sampling import IndexedItems

    class Named(Dataset):
        def __len__(self) -> int:
            return 7

        def __getitem__(self, index: int) -> dict:
            return {"image": torch.zeros(3, 2, 2), "mask": torch.zeros(2, 2, dtype=torch.int64), "name": f"im{index}"}

    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            loader = DataLoader(IndexedItems(Named()), batch_size=2, sampler=ShardSampler(7, world, rank),
                                collate_fn=PadCollate())  # fmt: skip
            for batch in loader:
                assert batch["name"] == [f"im{i}" for i in batch["index"].tolist()]
                seen += batch["index"].tolist()
        assert sorted(seen) == list(range(7))


def test_a_batch_without_positions_is_refused_under_several_processes():
    from segloss.models.evaluation import EvaluationMetrics

    evaluation = EvaluationMetrics(3, 255, ["a", "b", "c"], {})
    preds, logits = torch.zeros(2, 4, 4, dtype=torch.int64), torch.zeros(2, 3, 4, 4)
    batch = {"mask": torch.zeros(2, 4, 4, dtype=torch.int64), "name": ["x", "y"]}
    evaluation.update(preds, logits, batch)  # one process: numbered as they arrive
    with pytest.raises(ValueError, match='must carry "index"'):
        evaluation.update(preds, logits, batch, world=2)
