"""Per-step machinery of :class:`segloss.models.module.SegmentationModule`, kept apart from its metrics:
seeding each step, logging the training loss cheaply, keeping BatchNorm statistics for skipped steps,
deciding a non-finite loss over all ranks and sharing rank 0's buffers before evaluation."""

from __future__ import annotations

import os

import lightning.pytorch as L
import torch
from torch import Tensor

from segloss.data.sampling import mix_seed


class StepHooks(L.LightningModule):
    """Mixin: expects ``self.net`` and the ``_train_loss_sums``/``_train_loss_count`` attributes."""

    def _log_train_losses(self, values: dict[str, Tensor], batch_size: int) -> None:
        """``train/loss_step`` (and terms) on the steps the loggers write (``log_every_n_steps``), and
        ``train/loss_epoch``, the batch-size-weighted epoch mean of this rank, at the epoch end. Summed
        on the device between times: ``self.log`` on every step costs ~1 ms of Python, 2–4 % of a
        small step (benchmarks/bench_overhead.py)."""
        sums = self._train_loss_sums
        for name, value in values.items():
            value = value.detach()
            sums[name] = sums.get(name, 0) + value.float() * batch_size
        self._train_loss_count += batch_size
        connector = getattr(self._trainer, "_logger_connector", None)  # None outside a Trainer
        if getattr(connector, "should_update_logs", True):
            for name, value in values.items():
                self.log(f"{name}_step", value.detach(), on_step=True, on_epoch=False, prog_bar=name == "train/loss")

    def _keep_buffers(self) -> list[Tensor]:
        """Copy the float buffers (BatchNorm running statistics) before a step that may be skipped."""
        buffers = [b for b in self.net.buffers() if b.is_floating_point()]
        if getattr(self, "_kept_buffers", None) is None:
            self._kept_buffers = [b.detach().clone() for b in buffers]
        else:
            torch._foreach_copy_(self._kept_buffers, buffers)
        return buffers

    def _loss_broke(self, loss: Tensor) -> bool:
        broke = not bool(torch.isfinite(loss))
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank skips or none does
            broke = bool(self.trainer.strategy.reduce_boolean_decision(broke, all=False))
        return broke

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """In a seeded run, reseed torch's global RNG (dropout, …) from (seed, batch count, rank):
        the randomness of step ``k`` does not depend on what ran before it, so a resumed training
        draws the same numbers as an uninterrupted one. (Data augmentation is seeded per item by
        :mod:`segloss.data.sampling`.)"""
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None:
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
            torch.manual_seed(mix_seed(int(seed), batches, self.global_rank))

    def _share_rank_zero_buffers(self) -> None:
        """Evaluate every rank with rank 0's buffers (BatchNorm running statistics) — the ones saved in
        the checkpoint — so that a DDP validation equals a one-process evaluation of that checkpoint.
        One broadcast per buffer per validation, instead of DDP's broadcast at every forward."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_validation_epoch_start(self) -> None:
        self._share_rank_zero_buffers()

    def on_test_epoch_start(self) -> None:
        self._share_rank_zero_buffers()

    def on_train_epoch_start(self) -> None:
        self._train_loss_sums, self._train_loss_count = {}, 0

    def _log_train_loss_epoch(self) -> None:
        for name, total in self._train_loss_sums.items():
            self.log(f"{name}_epoch", total / max(self._train_loss_count, 1))
        self._train_loss_sums, self._train_loss_count = {}, 0
