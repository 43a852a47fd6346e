"""What a NaN/Inf training loss does (``model.nonfinite``): ``raise``, ``skip`` or ``ignore``.

* ``raise`` (default) stops the run with :class:`segloss.errors.NonFiniteLossError` naming the step, the
  images and the broken terms; nothing is saved after it, so the last good checkpoint stays intact.
* ``skip`` drops the batch: no backward, no update, and the BatchNorm running statistics — which the
  NaN forward has already poisoned — restored from a copy taken before the step.
* ``ignore`` does not check.

The check reads one number from the device per step (the module's only per-step host sync); under DDP
every rank skips or none does (one boolean all-reduce).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("raise", "skip", "ignore")


class NonFinitePolicy:
    def __init__(self, mode: str = "raise") -> None:
        if mode not in MODES:
            raise ValueError(f"nonfinite={mode!r}: choose raise, skip or ignore")
        self.mode = mode
        self.skipped = 0
        self._kept: list[Tensor] | None = None
        self._live: list[Tensor] = []

    def before_step(self, net: nn.Module) -> None:
        """With ``skip``: copy the float buffers (BatchNorm running statistics) that the step may poison."""
        if self.mode != "skip":
            return
        self._live = [b for b in net.buffers() if b.is_floating_point()]
        if self._kept is None or len(self._kept) != len(self._live):
            self._kept = [b.detach().clone() for b in self._live]
        else:
            torch._foreach_copy_(self._kept, self._live)

    def broke(self, loss: Tensor, trainer=None) -> bool:
        """Whether ``loss`` is not finite (on any rank); always False with ``ignore``."""
        if self.mode == "ignore":
            return False
        broke = not bool(torch.isfinite(loss))
        if trainer is not None and trainer.world_size > 1:  # every rank skips or none does
            broke = bool(trainer.strategy.reduce_boolean_decision(broke, all=False))
        return broke

    def skip(self) -> None:
        """Undo the step's effect on the buffers and count the skipped batch."""
        torch._foreach_copy_(self._live, self._kept)
        self.skipped += 1
