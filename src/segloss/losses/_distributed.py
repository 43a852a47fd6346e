"""Batch statistics over the global batch when a loss trains under DDP.

A loss whose value depends on the batch as a whole — the batch sums of the region losses, the sort of
Lovász-Softmax in batch mode, the selection thresholds of OHEM and TopK — would see only its rank's
shard under DDP. With W ranks and DDP's gradient averaging (÷W), every rank here computes the loss of
the *global* batch, and its gradient flows back to its own shard through a summing all-reduce, whose
backward sums the gradient over ranks (×W): after DDP's averaging the parameter gradients equal one
process on the same global batch (nnU-Net's batch Dice does the same).

Only while the loss module is training and a process group of more than one rank is initialised
(``active``). Evaluation keeps per-rank statistics: its shards may differ in length, and a collective
inside a loss would then wait forever on the rank that has run out of batches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def active(module: torch.nn.Module) -> bool:
    """Whether ``module`` should reduce over the global batch (training under a process group of W > 1)."""
    return module.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """Σ over ranks, differentiable: the backward sums the incoming gradients over ranks too."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def sum_over_ranks_detached(tensor: Tensor) -> Tensor:
    """Σ over ranks of a value that carries no gradient (counts, selections)."""
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def gather_last_dim(tensor: Tensor) -> tuple[Tensor, slice]:
    """Every rank's ``tensor`` joined along the last dimension (rank order, no gradient), and the slice of
    this rank's part. Shards may differ in length along that dimension (one small exchange of sizes)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    boolean = tensor.dtype == torch.bool
    tensor = (tensor.to(torch.uint8) if boolean else tensor).detach().contiguous()
    size = torch.tensor([tensor.shape[-1]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = torch.nn.functional.pad(tensor, (0, longest - tensor.shape[-1]))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    joined = torch.cat([part[..., :length] for part, length in zip(parts, sizes)], dim=-1)
    start = sum(sizes[:rank])
    return (joined.bool() if boolean else joined), slice(start, start + sizes[rank])
