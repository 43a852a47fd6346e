"""Find host–device synchronisations in tensor code, on any device (CPU included).

On a GPU, ``.item()``, ``bool(tensor)``, boolean-mask indexing (its output size depends on the data),
``nonzero``, ``unique`` or ``bincount`` make the CPU wait for the GPU — a stall per call in a
training step. :class:`HostSyncRecorder` is a ``TorchDispatchMode`` that records every operator of
that kind while code runs, so a test can assert that a loss or a metric update has none, without a
GPU (``torch.cuda.set_sync_debug_mode`` only works on one).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators whose result needs a value from the device (a size or a Python scalar).
SYNCING = {
    "aten::_local_scalar_dense",  # .item(), bool(), int(), float() of a tensor
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::nonzero_numpy",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",  # reads max(input) to size its output
    "aten::repeat_interleave",
}
# Operators that sync only when an index is a boolean mask (x[mask], x[mask] = v).
MASK_INDEXED = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _has_mask(args) -> bool:
    for arg in args:
        items = arg if isinstance(arg, list | tuple) else [arg]
        if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in items):
            return True
    return False


class HostSyncRecorder(TorchDispatchMode):
    """``with HostSyncRecorder() as rec: …`` then ``rec.calls``: the syncing operators, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNCING or (name in MASK_INDEXED and _has_mask(args[1:])):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))
