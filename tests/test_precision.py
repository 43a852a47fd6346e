"""trainer.precision=auto: bf16-mixed only where bfloat16 is native, decided with the machine's capabilities
mocked both ways; explicit values win; the choice is said once; the CUDA float32 matmul precision."""

from __future__ import annotations

import pytest
import torch

from segloss.build import build_trainer
from segloss.errors import ConfigError
from segloss.utils import precision as P

XEON_NO_BF16 = "processor : 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni fma\n"
SAPPHIRE_RAPIDS = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "processor : 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture(autouse=True)
def detection_not_forced(monkeypatch):
    """These tests are about the detection itself: a forced one (the suite's both-ways runs) stays outside."""
    monkeypatch.delenv(P.FORCE_CPU_BF16, raising=False)


def test_the_detection_can_be_forced_either_way_for_testing(monkeypatch):
    for forced, expected, flags in (("native", "bf16-mixed", set()), ("absent", "32-true", {"avx512_bf16"})):
        monkeypatch.setenv(P.FORCE_CPU_BF16, forced)
        monkeypatch.setattr(P, "cpu_flags", lambda *_, found=flags: found)  # the flags say the opposite
        precision, reason = P.resolve_precision("auto", "cpu")
        assert precision == expected and f"SEGLOSS_CPU_BF16={forced}" in reason
    monkeypatch.setenv(P.FORCE_CPU_BF16, "maybe")
    with pytest.raises(ConfigError, match=r"SEGLOSS_CPU_BF16='maybe': give native or absent"):
        P.resolve_precision("auto", "cpu")


def test_cpu_flags_are_read_from_cpuinfo():
    assert "avx512f" in P.cpu_flags(XEON_NO_BF16) and "avx512_bf16" not in P.cpu_flags(XEON_NO_BF16)
    assert {"avx512_bf16", "amx_bf16"} <= P.cpu_flags(SAPPHIRE_RAPIDS)
    assert P.cpu_flags("no such lines") == set()


@pytest.mark.parametrize(
    "cpuinfo,machine,native",
    [(XEON_NO_BF16, "x86_64", False), (SAPPHIRE_RAPIDS, "x86_64", True), ("flags : avx512_bf16\n", "x86_64", True),
     (GRAVITON3, "aarch64", True), ("Features : fp asimd\n", "aarch64", False), ("", "arm64", False)],
)  # fmt: skip
def test_auto_on_the_cpu_is_bf16_only_where_native(monkeypatch, cpuinfo, machine, native):
    flags = P.cpu_flags(cpuinfo)  # as read from that machine's /proc/cpuinfo
    monkeypatch.setattr(P, "cpu_flags", lambda *_: flags)
    monkeypatch.setattr(P.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision, reason = P.resolve_precision("auto", "auto")
    assert precision == ("bf16-mixed" if native else "32-true")
    assert ("has native bfloat16" in reason) == native and ("emulated" in reason) == (not native)


@pytest.mark.parametrize("native,name,capability", [(True, "NVIDIA H200", (9, 0)), (False, "Tesla V100", (7, 0))])
def test_auto_on_cuda_follows_the_device(monkeypatch, native, name, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(P, "cpu_flags", lambda *_: {"avx512_bf16"})  # the CPU must not decide a GPU run
    for accelerator in ("auto", "gpu", "cuda"):
        precision, reason = P.resolve_precision("auto", accelerator)
        assert precision == ("bf16-mixed" if native else "32-true") and name in reason
    if not native:
        assert "16-mixed is usually faster" in reason
    # a CPU run on a GPU machine is decided by the CPU
    assert P.resolve_precision("auto", "cpu")[0] == "bf16-mixed"


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed", "64-true"])
def test_an_explicit_precision_always_wins(monkeypatch, explicit):
    monkeypatch.setattr(P, "cpu_flags", lambda *_: {"avx512_bf16"})
    assert P.resolve_precision(explicit, "cpu") == (explicit, None)
    monkeypatch.setattr(P, "cpu_flags", lambda *_: set())
    assert P.resolve_precision(explicit, "cpu") == (explicit, None)


@pytest.mark.parametrize("flags,expected", [(set(), "32-true"), ({"amx_bf16"}, "bf16-mixed")])
def test_the_trainer_gets_the_resolved_precision_and_says_why_once(make_cfg, monkeypatch, capsys, flags, expected):
    monkeypatch.setattr(P, "cpu_flags", lambda *_: flags)
    trainer = build_trainer(make_cfg(["trainer=cpu", "trainer.precision=auto"]), loggers=[])
    assert trainer.precision == expected
    said = [line for line in capsys.readouterr().out.splitlines() if "trainer.precision=auto" in line]
    assert said == [said[0]] and f"→ {expected}" in said[0]
    build_trainer(make_cfg(["trainer=cpu", "trainer.precision=32-true"]), loggers=[])
    assert "trainer.precision=auto" not in capsys.readouterr().out  # explicit: nothing to explain


def test_float32_matmul_precision_is_set_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert P.set_matmul_precision("high", "gpu") == "high" and calls == ["high"]
    assert P.set_matmul_precision("highest", "auto") == "highest" and calls == ["high", "highest"]
    assert P.set_matmul_precision("high", "cpu") is None and P.set_matmul_precision(None, "gpu") is None
    assert calls == ["high", "highest"]
    with pytest.raises(P.ConfigError, match=r"float32_matmul_precision='fast': choose one of"):
        P.set_matmul_precision("fast", "gpu")
