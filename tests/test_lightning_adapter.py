"""segloss.utils.lightning_adapter against the installed Lightning: every private name it relies on still
exists and means what it meant when the module was written (fails on an upgrade that breaks one)."""

from __future__ import annotations

import inspect

import lightning
import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, TensorDataset

from segloss.utils import lightning_adapter as A


def test_the_private_names_the_adapter_uses_exist():
    major_minor = tuple(int(x) for x in lightning.__version__.split(".")[:2])
    assert major_minor >= tuple(int(x) for x in A.CHECKED_WITH.split("."))
    for name in ("_should_skip_saving_checkpoint", "_save_last_checkpoint", "_monitor_candidates",
                 "_should_save_on_train_epoch_end"):  # fmt: skip
        assert callable(getattr(ModelCheckpoint, name)), name
    assert list(inspect.signature(ModelCheckpoint._save_last_checkpoint).parameters)[:3] == [
        "self", "trainer", "monitor_candidates"]  # fmt: skip
    assert hasattr(ModelCheckpoint(), "_last_global_step_saved")
    assert callable(ExperimentWriter._check_log_dir_exists)
    logger = CSVLogger("unused")
    assert logger._experiment is None and hasattr(logger, "_fs")


class Probe(L.LightningModule):
    """Records, at each training batch, what the adapter reads of the Trainer."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, bool, int]] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def on_train_batch_start(self, batch, batch_idx):
        trainer = A.attached_trainer(self)
        self.seen.append((batch_idx, A.logs_this_step(trainer), A.batches_started(trainer)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_what_the_adapter_reads_follows_the_training(tmp_path):
    probe = Probe()
    assert A.attached_trainer(probe) is None and A.logs_this_step(None) and not A.logs_this_step(None, False)
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = L.Trainer(max_epochs=2, log_every_n_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(probe, data)
    # The loggers write on every 2nd step; the started batches count across epochs (4 batches an epoch).
    assert probe.seen == [(0, False, 1), (1, True, 2), (2, False, 3), (3, True, 4),
                          (0, False, 5), (1, True, 6), (2, False, 7), (3, True, 8)]  # fmt: skip
