"""The CPU intra-op thread count follows the load of other processes during training."""

from __future__ import annotations

import lightning.pytorch as L


class ThreadsFollowLoad(L.Callback):
    """Every :data:`~segloss.utils.threads.EVERY_S` seconds of training, choose torch's intra-op thread count
    again from the CPUs other processes keep busy (:mod:`segloss.utils.threads`). Fewer threads as soon as a
    CPU is taken (a thread sharing a core with a busy process stalls every operator); more only when two
    looks in a row agree (a short pause of the other process is not followed)."""

    def __init__(self, chooser, every_s: float | None = None):
        from segloss.utils import threads

        self.chooser, self.every_s = chooser, threads.EVERY_S if every_s is None else every_s
        self.pending: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        from segloss.utils import threads

        if threads.clock() - self.chooser.at < self.every_s:
            return
        chosen, others = self.chooser.choose()
        current = torch.get_num_threads()
        if chosen > current and self.pending != chosen:
            self.pending = chosen  # wait for a second look
            return
        self.pending = None
        if chosen != current:
            torch.set_num_threads(chosen)
            if trainer.is_global_zero:
                print(f"segloss: threads {current} → {chosen} ({others:.1f} CPUs busy elsewhere)", flush=True)
