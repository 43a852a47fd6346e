"""What a NaN/Inf training loss does (``model.nonfinite``): ``raise``, ``skip`` or ``ignore``.

* ``raise`` (default) stops the run with :class:`segloss.errors.NonFiniteLossError` naming the step, the
  images and the broken terms; nothing is saved after it, so the last good checkpoint stays intact.
* ``skip`` drops the batch: no backward, no update, and the BatchNorm running statistics — which the
  NaN forward has already poisoned — restored from a copy taken before the step. Skipped batches are counted
  (``train/skipped_batches``, the run's ``COMPLETED`` record and its final table); ``max_skips`` in a row
  (``model.nonfinite_max_skips``) stop the run: by then the weights themselves are broken.
* ``ignore`` does not check.

Whatever the policy, **no checkpoint holds a non-finite parameter or buffer**: before every save the
weights are checked (:func:`non_finite_tensors`, one host sync per checkpoint) and the save refused with an
error naming them — a step with a finite loss can still overflow a BatchNorm ``running_var``.

``raise`` on an accelerator is **deferred** (``model.nonfinite_defer``, null = deferred on accelerators,
per step on the CPU, where reading a number costs nothing): each step appends its loss and terms to a
list on the device, and the list is read — one host sync — on the steps the loggers write
(``trainer.log_every_n_steps``), at the end of each training epoch and **before every checkpoint is
written**, so a GPU never waits for the host between steps and no checkpoint is written after a broken
step. The error names the first broken step, its images and terms, as the per-step check does (not
whether its inputs and logits were finite: those are not kept). ``skip`` must decide before the
optimizer step, so it reads the loss every step. Under DDP every rank skips or raises or none does (one
boolean all-reduce per read).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from segloss.utils import consumer_rules
from segloss.utils.rules import Rule, require_all


class NonFinitePolicy:
    # The rules of model.nonfinite*: applied here, declared in utils.consumer_rules (read by checks).
    RULES: ClassVar[dict[str, Rule]] = consumer_rules.NONFINITE

    def __init__(self, mode: str = "raise", defer: bool | None = None, max_skips: int = 20) -> None:
        """Raises:
        ConfigError: a value breaks its rule in :attr:`RULES` (the message names the config key)."""
        require_all(self.RULES, {"mode": mode, "defer": defer, "max_skips": max_skips})
        self.mode, self.defer, self.max_skips = mode, defer, max_skips
        self._pending: list[tuple[Tensor, dict]] = []  # deferred: (loss and term values, where and images)
        self.skipped, self.in_a_row = 0, 0
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
        self.in_a_row += 1

    def defers(self, loss: Tensor) -> bool:
        """Whether this loss is recorded for a later read instead of being read now."""
        if self.mode != "raise":
            return False
        return self.defer if self.defer is not None else loss.device.type != "cpu"

    def record(self, loss: Tensor, terms: dict[str, Tensor], info: dict) -> None:
        """Keep the step's loss and term values (on their device) with ``info`` (``where``, ``names``)."""
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())])
        self._pending.append((values, {**info, "terms": list(terms)}))

    def first_broken(self, trainer=None) -> dict | None:
        """Read the recorded steps (one host sync) and forget them: the ``info`` of the first whose loss is
        not finite, with ``loss`` and the ``broken`` term names; ``{"elsewhere": True}`` when only another
        rank broke; None when all were finite."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        finite = [bool(ok) for ok in torch.stack([v[0] for v, _ in pending]).isfinite().tolist()]
        broke = not all(finite)
        if trainer is not None and trainer.world_size > 1:
            if not bool(trainer.strategy.reduce_boolean_decision(broke, all=False)):
                return None
            if not broke:
                return {"elsewhere": True}
        if not broke:
            return None
        values, info = pending[finite.index(False)]
        values = values.tolist()
        broken = [name for name, value in zip(info["terms"], values[1:], strict=True) if not math.isfinite(value)]
        return {**info, "loss": values[0], "broken": broken}


def non_finite_tensors(module: nn.Module, limit: int = 8) -> list[str]:
    """The names (at most ``limit``) of the parameters and floating-point buffers of ``module`` that hold a NaN
    or an infinity; one host sync for all of them."""
    named = [(n, t) for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([t.detach().isfinite().all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok][:limit]
