"""No host–device synchronisation in any loss preset's forward + backward (segloss.utils.host_sync)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from segloss.losses import _checks
from segloss.utils.config import CONFIG_DIR
from segloss.utils.host_sync import HostSyncRecorder
from tests.helpers.losses import PRESETS, apply_loss, example_inputs, preset_loss


def test_every_loss_preset_is_checked():
    """PRESETS skips a YAML without its own _target_; each of those must extend a checked preset (wce: ce with
    class weights counted from data), so no loss class goes unchecked."""
    files = list((CONFIG_DIR / "loss").glob("*.yaml"))
    skipped = {p.stem: OmegaConf.load(p) for p in files if p.stem not in PRESETS}
    assert len(PRESETS) + len(skipped) == len(files)
    assert {name: list(node.get("defaults", [])) for name, node in skipped.items()} == {"wce": ["ce", "_self_"]}


@pytest.mark.parametrize("name", PRESETS)
def test_loss_preset_has_no_host_sync_once_target_checks_are_done(name, monkeypatch):
    loss = preset_loss(name)
    logits, target = example_inputs(name)
    logits.requires_grad_()
    monkeypatch.setattr(_checks.TargetChecks, "due", lambda self, target: False)  # as after the first accelerator steps
    with HostSyncRecorder() as rec:
        value = apply_loss(loss, logits, target)
        value.backward()
    assert rec.calls == [], f"{name}: {rec.calls}"
    assert torch.isfinite(value) and logits.grad is not None


def test_target_values_are_checked_always_on_cpu_and_first_on_an_accelerator(monkeypatch):
    monkeypatch.delenv("SEGLOSS_CHECK_TARGETS", raising=False)
    checks, other = _checks.TargetChecks(on_accelerator=2), _checks.TargetChecks(on_accelerator=2)
    cpu, meta = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64, device="meta")
    assert all(checks.due(cpu) for _ in range(5))
    assert [checks.due(meta) for _ in range(4)] == [True, True, False, False]
    assert other.due(meta), "each loss has its own budget: a second one checks its first targets too"
    assert not _checks.TargetChecks(enabled=False).due(cpu)
    monkeypatch.setenv("SEGLOSS_CHECK_TARGETS", "always")
    assert checks.due(meta)
    assert isinstance(preset_loss("dice_ce").terms["ce"].check_values, _checks.TargetChecks)
    with pytest.raises(ValueError, match=r"values \[19\] outside \[0, 19\)"):
        preset_loss("ce")(torch.randn(1, 19, 2, 2), torch.full((1, 2, 2), 19))
