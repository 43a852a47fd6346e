"""No host–device synchronisation in any loss preset's forward + backward (segloss.utils.host_sync)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from segloss.losses import _checks
from segloss.utils.config import CONFIG_DIR
from segloss.utils.host_sync import HostSyncRecorder

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml") if "_target_" in OmegaConf.load(p))


BINARY = ("bce", "bce_dice")  # one sigmoid channel: C = 1 logits, 0/1 targets


def example_inputs(name: str, size=(24, 40), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target (top rows ignored) that preset ``name`` takes: 19 classes, or 1 channel for BINARY."""
    g = torch.Generator().manual_seed(seed)
    channels, classes = (1, 2) if name in BINARY else (19, 19)
    logits = torch.randn(2, channels, *size, generator=g)
    target = torch.randint(0, classes, (2, *size), generator=g)
    target[:, : max(1, size[0] // 8)] = 255
    return logits, target


def _preset(name: str):
    node = OmegaConf.merge({"data": {"ignore_index": 255, "num_classes": 19}}, {"loss": OmegaConf.load(
        Path(CONFIG_DIR) / "loss" / f"{name}.yaml")})  # fmt: skip
    return hydra.utils.instantiate(node.loss)


@pytest.mark.parametrize("name", PRESETS)
def test_loss_preset_has_no_host_sync_once_target_checks_are_done(name, monkeypatch):
    assert len(PRESETS) >= 14
    loss = _preset(name)
    logits, target = example_inputs(name)
    logits.requires_grad_()
    monkeypatch.setattr(_checks, "value_check_due", lambda target: False)  # as after the first accelerator steps
    with HostSyncRecorder() as rec:
        value = loss(logits, target)
        value.backward()
    assert rec.calls == [], f"{name}: {rec.calls}"
    assert torch.isfinite(value) and logits.grad is not None


def test_target_values_are_checked_always_on_cpu_and_first_on_an_accelerator(monkeypatch):
    monkeypatch.setattr(_checks, "_accelerator_checks_left", [2])
    monkeypatch.delenv("SEGLOSS_CHECK_TARGETS", raising=False)
    cpu, meta = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64, device="meta")
    assert all(_checks.value_check_due(cpu) for _ in range(5))
    assert [_checks.value_check_due(meta) for _ in range(4)] == [True, True, False, False]
    monkeypatch.setenv("SEGLOSS_CHECK_TARGETS", "always")
    assert _checks.value_check_due(meta)
    with pytest.raises(ValueError, match=r"values \[19\] outside \[0, 19\)"):
        _preset("ce")(torch.randn(1, 19, 2, 2), torch.full((1, 2, 2), 19))
