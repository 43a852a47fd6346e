"""Loss benchmark: forward+backward time and peak memory of each segloss loss next to the same loss
in segmentation-models-pytorch, MONAI and torch, on the same inputs, in one run.

    python benchmarks/bench_losses.py [--device cpu|cuda] [--size N C H W] [--repeats R] [--json PATH]

Time is the median of R runs after a warm-up, the implementations of a loss taking turns within
each run so that they share the machine's load. Peak memory is what the call adds on top of
its inputs: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the resident high-water mark (VmHWM,
reset through /proc/self/clear_refs before each call), measured in a second process in which glibc
serves every block over 64 KiB by mmap so that freed tensors leave the resident set at once (that
setting slows allocation, so times are taken in a normal process). Ratios are ours divided
by the fastest reference of the same loss (< 1 means faster). Inputs hold no ignored pixels so that
every library computes the same quantity.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segloss import losses as ours

MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}  # read by glibc at start-up


def references(num_classes: int) -> dict[str, dict[str, object]]:
    """{loss: {implementation: callable(logits, target)}}; missing libraries are skipped."""
    table: dict[str, dict[str, object]] = {
        "ce": {"segloss": ours.CrossEntropyLoss(), "torch": lambda z, t: F.cross_entropy(z, t, ignore_index=255)},
        "focal": {"segloss": ours.FocalLoss(gamma=2.0)},
        "dice": {"segloss": ours.DiceLoss()},
        "generalized_dice": {"segloss": ours.GeneralizedDiceLoss()},
        "jaccard": {"segloss": ours.JaccardLoss(classes="present")},
        "tversky": {"segloss": ours.TverskyLoss()},
        "focal_tversky": {"segloss": ours.FocalTverskyLoss()},
        "lovasz": {"segloss": ours.LovaszSoftmaxLoss()},
        "mse": {
            "segloss": ours.MSELoss(),
            "torch": lambda z, t: F.mse_loss(z.float().softmax(1), F.one_hot(t, num_classes).movedim(-1, 1).float()),
        },
        "kl_ls": {
            "segloss": ours.KLDivLoss(label_smoothing=0.1),
            "torch": lambda z, t: (
                F.kl_div(
                    z.float().log_softmax(1),
                    F.one_hot(t, num_classes).movedim(-1, 1).float() * 0.9 + 0.1 / num_classes,
                    reduction="sum",
                )
                / t.numel()
            ),
        },
        "cldice": {"segloss": ours.ClDiceLoss()},
        "ohem": {"segloss": ours.OhemCrossEntropyLoss()},
        "topk": {"segloss": ours.TopKCrossEntropyLoss()},
    }
    try:
        import segmentation_models_pytorch.losses as smp

        table["ce"]["smp"] = smp.SoftCrossEntropyLoss(smooth_factor=0.0, ignore_index=255)
        table["focal"]["smp"] = smp.FocalLoss("multiclass", gamma=2.0, ignore_index=255)
        table["dice"]["smp"] = smp.DiceLoss("multiclass", from_logits=True, smooth=1e-5)
        table["jaccard"]["smp"] = smp.JaccardLoss("multiclass", from_logits=True)
        table["tversky"]["smp"] = smp.TverskyLoss("multiclass", from_logits=True, alpha=0.3, beta=0.7)
        table["focal_tversky"]["smp"] = smp.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=4 / 3)
        table["lovasz"]["smp"] = smp.LovaszLoss("multiclass", ignore_index=255)
    except ImportError:
        print("segmentation-models-pytorch not installed: its columns are skipped")
    try:
        import monai.losses as monai

        onehot = {"softmax": True, "to_onehot_y": True, "batch": True}
        table["dice"]["monai"] = _with_channel(monai.DiceLoss(**onehot))
        table["generalized_dice"]["monai"] = _with_channel(monai.GeneralizedDiceLoss(**onehot))
        table["tversky"]["monai"] = _with_channel(monai.TverskyLoss(alpha=0.3, beta=0.7, **onehot))
        table["focal"]["monai"] = _with_channel(monai.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0))
        # max-pool soft skeletons (the paper's code); MONAI pools the foreground channels into one score
        # where segloss averages per class: the same skeleton work, a slightly different reduction
        cl = monai.SoftDiceclDiceLoss(iter_=3, alpha=0.5, smooth=1.0)
        table["cldice"]["monai"] = lambda z, t: cl(F.one_hot(t, num_classes).movedim(-1, 1).float(), z.softmax(1))
    except ImportError:
        print("monai not installed: its columns are skipped")
    return table


def _with_channel(loss):
    """MONAI takes targets N×1×S…"""
    return lambda z, t: loss(z, t.unsqueeze(1))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _step(fn, logits: torch.Tensor, target: torch.Tensor) -> None:
    z = logits.detach().requires_grad_(True)
    fn(z, target).backward()


def time_round_robin(impls: dict, logits: torch.Tensor, target: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds per implementation, timed in turn within each repeat so that
    every implementation sees the same machine load (the ratios are what this benchmark reports)."""
    cuda = logits.is_cuda
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for fn in impls.values():
        _step(fn, logits, target)  # warm-up
    for _ in range(repeats):
        for impl, fn in impls.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(fn, logits, target)
            if cuda:
                torch.cuda.synchronize()
            times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(values) for impl, values in times.items()}


def peak_mib(fn, logits: torch.Tensor, target: torch.Tensor) -> float:
    """Memory one forward+backward adds on top of its inputs (see the module docstring)."""
    _step(fn, logits, target)  # warm-up: lazy initialisation is not the loss's memory
    if logits.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(fn, logits, target)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS:")
    _step(fn, logits, target)
    return (_rss_kib("VmHWM:") - base) / 1024


def _size(args) -> tuple[int, int, int, int]:
    return tuple(args.size or ((8, 19, 512, 1024) if args.device == "cuda" else (4, 19, 256, 512)))


def run_all(args, memory: bool) -> dict[str, tuple[float, float]]:
    """{"loss|impl": (seconds, peak MiB)} for every selected loss and implementation."""
    n, c, h, w = _size(args)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, h, w, generator=gen).to(args.device)
    target = torch.randint(0, c, (n, h, w), generator=gen).to(args.device)
    out = {}
    for name, impls in references(c).items():
        if args.only and name not in args.only:
            continue
        if memory:
            out.update({f"{name}|{impl}": (float("nan"), peak_mib(fn, logits, target)) for impl, fn in impls.items()})
        else:
            seconds = time_round_robin(impls, logits, target, args.repeats)
            peaks = {
                impl: peak_mib(fn, logits, target) if logits.is_cuda else float("nan") for impl, fn in impls.items()
            }
            out.update({f"{name}|{impl}": (seconds[impl], peaks[impl]) for impl in impls})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=4, metavar=("N", "C", "H", "W"), default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="loss names to run (default: all)")
    parser.add_argument("--json", default="benchmarks/results/losses.json")
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu_memory = args.device == "cpu" and Path("/proc/self/clear_refs").exists()
    if args.memory_pass:
        peaks = run_all(args, memory=True)
        print(json.dumps(peaks))
        return
    peaks = {}
    if cpu_memory:
        child = subprocess.run(
            [sys.executable, *sys.argv, "--memory-pass"], env={**os.environ, **MEMORY_ENV},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks = {tuple(k.split("|")): v[1] for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    n, c, h, w = _size(args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"device {args.device} ({device_name}), torch threads {torch.get_num_threads()}, inputs N={n} C={c} {h}×{w}")
    print(f"{'loss':18s} {'impl':8s} {'fwd+bwd ms':>11s} {'peak MiB':>9s} {'time ratio':>11s} {'mem ratio':>10s}")
    results_all = run_all(args, memory=False)
    rows = []
    for name in dict.fromkeys(k.split("|")[0] for k in results_all):
        results = {k.split("|")[1]: v for k, v in results_all.items() if k.split("|")[0] == name}
        results = {impl: (t, peaks.get((name, impl), p)) for impl, (t, p) in results.items()}
        refs = {k: v for k, v in results.items() if k != "segloss"}
        best_time = min((v[0] for v in refs.values()), default=None)
        best_mem = min((v[1] for v in refs.values()), default=None)
        for impl, (seconds, peak) in results.items():
            ratio = f"{results['segloss'][0] / best_time:.2f}×" if impl == "segloss" and best_time else ""
            mem_ratio = f"{results['segloss'][1] / best_mem:.2f}×" if impl == "segloss" and best_mem else ""
            print(f"{name:18s} {impl:8s} {seconds * 1e3:11.1f} {peak:9.1f} {ratio:>11s} {mem_ratio:>10s}")
            rows.append({"loss": name, "impl": impl, "ms": seconds * 1e3, "peak_mib": peak})
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "device_name": device_name, "threads": torch.get_num_threads(), "size": _size(args)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
