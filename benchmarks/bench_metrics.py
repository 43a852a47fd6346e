"""Metric update: segloss's ``ConfusionScores.update`` against torchmetrics, on the same batch.

    python benchmarks/bench_metrics.py [--device cpu|cuda] [--size N C H W] [--repeats R] [--json PATH]

One update of a batch of predictions and labels (N=8, C=19, 512×1024 by default, the top 10 % of
each label ignored): ours (one confusion matrix → IoU, Dice, accuracy and recall) against torchmetrics'
``MulticlassJaccardIndex`` alone and against the pair ``MulticlassJaccardIndex`` +
``MulticlassAccuracy`` that segloss used before; and the optional metrics of the ``metrics`` config node
(Boundary IoU, calibration from N×C×H×W logits, small-object recall), so their cost per validation
batch is known before switching them on. Median of R interleaved repeats after a warm-up,
ratio = time / ``MulticlassJaccardIndex`` time. Also counts the host–device synchronising operators
of one update (:class:`segloss.utils.host_sync.HostSyncRecorder`); on CUDA the update runs once more
under ``torch.cuda.set_sync_debug_mode("error")`` to prove it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segloss.metrics import ConfusionScores
from segloss.metrics.quality import BoundaryIoU, Calibration, SmallObjectRecall
from segloss.utils.host_sync import HostSyncRecorder


def quality_variants(num_classes: int, device: str, logits: torch.Tensor) -> dict:
    """The optional validation metrics (``metrics`` config node), timed on the same batch."""
    boundary = BoundaryIoU(num_classes).to(device)
    calibration = Calibration(num_classes).to(device)
    small = SmallObjectRecall(num_classes).to(device)
    return {
        "Boundary IoU (d = 2 % of the diagonal)": boundary.update,
        "calibration (ECE + NLL, from logits)": lambda p, t: calibration.update(logits, t),
        "small-object recall (CPU, scipy)": small.update,
    }


def variants(num_classes: int, device: str) -> dict:
    jaccard = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255, validate_args=False).to(device)
    pair = (
        MulticlassJaccardIndex(num_classes, average="none", ignore_index=255, validate_args=False).to(device),
        MulticlassAccuracy(num_classes, average="micro", ignore_index=255, validate_args=False).to(device),
    )
    ours = ConfusionScores(num_classes).to(device)
    return {
        "segloss": ours.update,
        "torchmetrics Jaccard": jaccard.update,
        "torchmetrics Jaccard + Accuracy": lambda p, t: (pair[0].update(p, t), pair[1].update(p, t)),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, nargs=4, default=(8, 19, 512, 1024), metavar=("N", "C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default="benchmarks/results/metrics.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_metrics: --device cuda needs a CUDA GPU; run with --device cpu here")
        return {}
    n, c, h, w = args.size
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, c, (n, h, w), generator=g).to(args.device)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[:, : h // 10] = 255
    target = target.to(args.device)
    table = variants(c, args.device)
    logits = torch.randn(n, c, h, w, generator=g).to(args.device)
    table.update(quality_variants(c, args.device, logits))
    syncs = {}
    for name, update in table.items():
        update(preds, target)  # warm-up
        with HostSyncRecorder() as rec:
            update(preds, target)
        syncs[name] = sorted(set(rec.calls)) if rec.calls else []
    if args.device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        table["segloss"](preds, target)  # raises if the update synchronises
        torch.cuda.set_sync_debug_mode(0)
    times: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(args.device)
            start = time.perf_counter()
            table[name](preds, target)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    ref = median["torchmetrics Jaccard"]
    print(f"metric update, N={n} C={c} {h}×{w}, {args.device}, median of {args.repeats}")
    print(f"{'variant':40s} {'ms':>8s} {'vs Jaccard':>11s}   syncing ops in one update")
    for name in names:
        ops = ", ".join(syncs[name]) or "none"
        print(f"{name:40s} {median[name]:8.1f} {median[name] / ref:10.2f}×   {ops}")
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "median_ms": median,
        "ratio_to_jaccard": {name: median[name] / ref for name in names},
        "syncing_ops": syncs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
