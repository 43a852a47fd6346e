"""benchmarks/bench_train_step.py: its arithmetic on fixed numbers, a quick CPU run (that it runs and reports
consistently — never how fast: speed depends on the machine and its load) and the no-GPU exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import load_benchmark


def load_bench():
    return load_benchmark("bench_train_step")


def test_mfu_arithmetic_on_fixed_numbers():
    mfu = load_bench().model_flops_utilisation
    # 2 TFLOP per step of 8 images at 100 img/s = 12.5 steps/s = 25 TFLOP/s; of a 50 TFLOP/s peak: 50 %
    assert mfu(2e12, 100.0, 8, 50e12) == pytest.approx(0.5)
    assert mfu(1e9, 10.0, 2, 1e12) == pytest.approx(0.005)


def run_bench(capsys, *args: str) -> str:
    """``bench_train_step.py args`` through its ``main(argv)``, in this process; what it printed."""
    assert load_bench().main(list(args)) == 0
    return capsys.readouterr().out


def check_variant(r: dict) -> None:
    assert r["status"] == "ok", r
    assert r["images_per_s"] > 0
    assert r["flops_per_step"] > 0
    assert r["mfu"] > 0  # its value depends on the machine's load; its arithmetic is checked below
    assert r["peak_memory_bytes"] is None  # CPU: no peak memory


def test_quick_cpu_unet(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ts.json"
    args = ("--device", "cpu", "--quick", "--nets", "unet", "--variants", "fp32,bf16", "--steps", "1", "--warmup", "0")
    printed = run_bench(capsys, *args, "--out", str(out))
    assert "unet" in printed and "bf16 matmul peak" in printed
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_count"] >= 1
    assert report["machine"]["torch"] == torch.__version__
    assert report["settings"]["quick"] is True and report["settings"]["batch"] == 2
    assert report["peak_bf16_matmul_tflops"] > 0
    variants = report["results"]["unet"]
    assert set(variants) == {"fp32", "bf16"}
    for r in variants.values():
        check_variant(r)
        assert (r["height"], r["width"]) == (64, 128)
    # FLOPs are counted from the ops' shapes: the same computation in bf16 counts the same.
    assert variants["fp32"]["flops_per_step"] == variants["bf16"]["flops_per_step"]
    assert variants["fp32"]["speedup_vs_fp32"] == pytest.approx(1.0)
    # MFU is derived from the measured numbers, not set independently.
    for r in variants.values():
        step_s = 2 / r["images_per_s"]
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / step_s / (report["peak_bf16_matmul_tflops"] * 1e12))


def test_quick_cpu_deeplabv3plus_fp32(tmp_path: Path, capsys) -> None:
    # DeepLabV3+ R-50 built from configs/model/deeplabv3plus.yaml; bf16 on CPU is too slow for a smoke test.
    out = tmp_path / "ts.json"
    args = ("--device", "cpu", "--quick", "--nets", "deeplabv3plus", "--variants", "fp32", "--steps", "1")
    run_bench(capsys, *args, "--warmup", "0", "--out", str(out))
    r = json.loads(out.read_text())["results"]["deeplabv3plus"]["fp32"]
    check_variant(r)
    # A ResNet-50 DeepLabV3+ step costs far more than the seed U-Net's: > 10 GFLOP at 2×64×128.
    assert r["flops_per_step"] > 1e10


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_cuda_without_gpu_exits_cleanly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ts.json"
    printed = run_bench(capsys, "--out", str(out))
    assert "needs a CUDA GPU" in printed
    assert "--device cpu --quick" in printed
    assert not out.exists()
