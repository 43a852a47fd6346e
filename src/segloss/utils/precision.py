"""Numeric precision that fits the hardware: ``trainer.precision=auto`` and the checks of explicit values.

``auto`` (the default) resolves, once per run, to

* ``bf16-mixed`` on a CUDA GPU with native bfloat16 (compute capability ≥ 8.0: Ampere, Hopper, …) and on
  a CPU with native bfloat16 instructions — x86 ``avx512_bf16`` or ``amx_bf16`` (Intel Cooper Lake,
  Sapphire Rapids and later; AMD Zen 4 and later), aarch64 ``bf16`` (Arm v8.6+, e.g. AWS Graviton 3);
* ``32-true`` everywhere else. Without native support bfloat16 is emulated in software, several times
  slower than float32 (measured: 1,069 s against 463 s for ``make train`` on an AVX-512 Xeon without
  AVX512-BF16). On a GPU without bfloat16 (V100, T4) ``16-mixed`` is usually the fast choice; segloss does
  not pick it silently (float16 needs loss scaling), it says so.

``SEGLOSS_CPU_BF16=native|absent`` forces the CPU detection either way (a testing switch: the suite runs
green both ways, so its verdict does not depend on the CPU it lands on).

Any other value of ``trainer.precision`` is the user's choice and always wins; :func:`check_precision`
only refuses values the device cannot run. On CUDA, float32 matmuls and convolutions may use TF32 tensor
cores (``float32_matmul_precision``, default ``high``; ``highest`` keeps full float32, ``null`` leaves
torch's setting alone).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from segloss.errors import ConfigError

FLOAT16 = ("16-mixed", "16-true", "16")
BFLOAT16 = ("bf16-mixed", "bf16-true", "bf16")
PRECISIONS = ("32-true", "32", "64-true", "64", *FLOAT16, *BFLOAT16)
AUTO = "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 /proc/cpuinfo "flags"
ARM_BF16_FEATURE = "bf16"  # aarch64 /proc/cpuinfo "Features"


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``); empty where the
    file does not exist (macOS, Windows)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


FORCE_CPU_BF16 = "SEGLOSS_CPU_BF16"  # native | absent: the detection forced (module docstring)


def cpu_bf16_native(flags: set[str] | None = None) -> tuple[bool, str]:
    """``(native, why)``: whether this CPU executes bfloat16 natively, and the flags that say so."""
    forced = os.environ.get(FORCE_CPU_BF16, "").strip().lower()
    if flags is None and forced in ("native", "absent"):
        return forced == "native", f"{FORCE_CPU_BF16}={forced} forces the bfloat16 detection"
    if flags is None and forced:
        raise ConfigError(f"{FORCE_CPU_BF16}={forced!r}: give native or absent, or unset it")
    flags = cpu_flags() if flags is None else flags
    found = sorted(f for f in CPU_BF16_FLAGS if f in flags)
    if not found and platform.machine().lower() in ("aarch64", "arm64") and ARM_BF16_FEATURE in flags:
        found = [ARM_BF16_FEATURE]
    if found:
        return True, f"this CPU has native bfloat16 ({', '.join(found)})"
    return False, (
        "this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag), so bf16 would be emulated, several "
        "times slower than float32"
    )


def cuda_bf16_native() -> tuple[bool, str]:
    """``(native, why)`` for the current CUDA device (emulated bfloat16 does not count)."""
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"{name} (compute capability {major}.{minor}) has native bfloat16"
    return False, (
        f"{name} (compute capability {major}.{minor}) has no native bfloat16; trainer.precision=16-mixed is "
        "usually faster there (float16 with loss scaling)"
    )


def resolve_precision(precision, accelerator) -> tuple[str, str | None]:
    """``(precision, reason)``: ``auto`` resolved for this machine with the reason, or an explicit value
    as given (reason None)."""
    precision = str(precision)
    if precision != AUTO:
        return precision, None
    native, why = cuda_bf16_native() if uses_cuda(str(accelerator)) else cpu_bf16_native()
    return ("bf16-mixed" if native else "32-true"), why


def check_precision(precision, accelerator) -> None:
    """An explicit ``trainer.precision`` must be one Lightning knows and that the device runs: float16
    needs a CUDA GPU (Lightning would silently switch a CPU run to bf16), bfloat16 a GPU that has it."""
    precision, accelerator = str(precision), str(accelerator)
    if precision not in (*PRECISIONS, AUTO):
        raise ConfigError(f"trainer.precision={precision!r} is not one of {[AUTO, *PRECISIONS]}")
    cuda = uses_cuda(accelerator)
    if precision in FLOAT16 and not cuda:
        raise ConfigError(
            f"trainer.precision={precision} (float16) needs a CUDA GPU, but this run uses the CPU "
            f"(trainer.accelerator={accelerator}); use trainer.precision=auto, bf16-mixed or 32-true"
        )
    if precision in BFLOAT16 and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no bfloat16; "
            "use trainer.precision=auto, 16-mixed or 32-true"
        )


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(value, accelerator) -> str | None:
    """``torch.set_float32_matmul_precision(value)`` when the run uses CUDA (TF32 tensor cores for float32
    work; ``high`` by default); nothing on the CPU or with ``value`` None. Returns what was set."""
    if value is None or not uses_cuda(str(accelerator)):
        return None
    if str(value) not in MATMUL_PRECISIONS:
        raise ConfigError(f"float32_matmul_precision={value!r}: choose one of {list(MATMUL_PRECISIONS)} or null")
    torch.set_float32_matmul_precision(str(value))
    return str(value)
