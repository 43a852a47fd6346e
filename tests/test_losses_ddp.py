"""Batch-level losses under DDP equal one process on the global batch: 2 CPU processes (gloo), each with
its shard of the batch and a DistributedDataParallel model; after DDP's gradient averaging the loss value
and every parameter gradient match a single process on the whole batch to 1e-6."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from segloss import losses as L

WORLD, CLASSES = 2, 4
LOSSES = {
    "dice": lambda: L.DiceLoss(),
    "dice_present_nobg": lambda: L.DiceLoss(classes="present", include_background=False, smooth=0.0),
    "jaccard": lambda: L.JaccardLoss(),
    "tversky": lambda: L.TverskyLoss(alpha=0.3, beta=0.7),
    "focal_tversky": lambda: L.FocalTverskyLoss(),
    "generalized_dice": lambda: L.GeneralizedDiceLoss(),
    "lovasz": lambda: L.LovaszSoftmaxLoss(per_image=False),
    "ohem": lambda: L.OhemCrossEntropyLoss(thresh=0.3, min_kept=40),
    "topk": lambda: L.TopKCrossEntropyLoss(k=25.0),
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 4 images whose shards differ: image 1 is mostly ignored, class 3 only in rank 1's."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(4, 3, 8, 10, generator=g)
    target = torch.randint(0, 3, (4, 8, 10), generator=g)
    target[3, :3] = 3
    target[1, 1:] = 255
    target[2, :, :2] = 255
    return images, target


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, CLASSES, 3, padding=1)


def one_process(name: str) -> tuple[float, list[torch.Tensor]]:
    net, (images, target) = model(), batch()
    loss = LOSSES[name]()(net(images), target)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in net.parameters()]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    images, target = batch()
    shard = slice(2 * rank, 2 * rank + 2)
    results = {}
    for name, make in LOSSES.items():
        net = DistributedDataParallel(model())
        loss = make()(net(images[shard]), target[shard])
        loss.backward()  # DDP averages the gradients over the 2 ranks
        results[name] = (float(loss.detach()), [p.grad.clone() for p in net.parameters()])
    with torch.no_grad():  # evaluation mode: this shard's statistics only (shards may differ in length)
        results["eval_dice"] = float(L.DiceLoss().eval()(model()(images[shard]), target[shard]))
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = str(tmp_path_factory.mktemp("ddp") / "losses")
    torch.multiprocessing.start_processes(_rank, (_free_port(), out), nprocs=WORLD, start_method="spawn")
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(WORLD)]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_processes_equal_one_process_on_the_global_batch(two_ranks, name):
    value, grads = one_process(name)
    for rank in two_ranks:
        got_value, got_grads = rank[name]
        assert got_value == pytest.approx(value, abs=1e-6, rel=1e-6)
        for got, expected in zip(got_grads, grads):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_the_shards_really_differ_and_evaluation_stays_per_rank(two_ranks):
    # without the global reduction the two ranks would see different batch statistics
    images, target = batch()
    local = [float(L.DiceLoss()(model()(images[s]), target[s])) for s in (slice(0, 2), slice(2, 4))]
    assert abs(local[0] - local[1]) > 5e-3
    assert [rank["eval_dice"] for rank in two_ranks] == pytest.approx(local, abs=1e-6)
    assert all(abs(two_ranks[0]["dice"][0] - value) > 1e-3 for value in local)
