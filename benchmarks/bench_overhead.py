"""Framework overhead: segloss's LightningModule + Lightning Trainer against a hand-written PyTorch loop.

    python benchmarks/bench_overhead.py [--steps K] [--rounds R] [--device cpu|cuda] [--precision 32-true|bf16-mixed]

Both train the same net (the seed U-Net, base 16, depth 4, channels-last as in the default config)
with the same in-memory data (random 3×H×W images and masks, one DataLoader, no workers), AdamW
2e-3, cross-entropy and precision, for K optimizer steps from the same initial weights. Variants:

* ``loop``: ``zero_grad → autocast forward → cross_entropy → backward → step`` — the reference;
* ``lightning``: ``SegmentationModule`` (``train_metrics=False``) in a ``Trainer`` with logging,
  checkpointing, progress bar and validation off, so what is timed is the framework itself;
* ``lightning+metrics``: the module as ``make train`` runs it, also updating the training confusion
  matrix and logging ``train/loss`` every step (the cost of those features, not of Lightning).

After one discarded round, the variants take turns in every round (order rotated) so they share the
machine's load; every step after one warm-up step per variant and round is timed (to the end of the
optimizer step, device synchronised), and the report is the median step time over all rounds — robust
to the load spikes of a shared machine — and its ratio to ``loop`` (target: ``lightning`` ≤ 1.03).
Writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segloss.losses import CrossEntropyLoss
from segloss.models.module import SegmentationModule
from segloss.models.nets.unet import UNet

NUM_CLASSES = 19


class InMemory(Dataset):
    def __init__(self, count: int, height: int, width: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, height, width, generator=g)
        self.masks = torch.randint(0, NUM_CLASSES, (count, height, width), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i]}


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(num_classes=NUM_CLASSES, base_channels=16, depth=4).to(memory_format=torch.channels_last)


def run_loop(loader: DataLoader, steps: int, device: str, precision: str) -> list[float]:
    net = make_net().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def one(batch):
        image = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        mask = batch["mask"].to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            logits = net(image)
        loss = F.cross_entropy(logits.float(), mask, ignore_index=255)
        loss.backward()
        optimizer.step()

    it = iter(loader)
    one(next(it))  # warm-up
    sync(device)
    stamps = [time.perf_counter()]
    for _ in range(steps):
        one(next(it))
        sync(device)
        stamps.append(time.perf_counter())
    return step_times(stamps)


def step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


class Timer(L.Callback):
    """End time of every step; the first (warm-up) step only opens the clock."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(str(pl_module.device.type))
        self.stamps.append(time.perf_counter())


def run_lightning(loader: DataLoader, steps: int, device: str, precision: str, train_metrics: bool) -> list[float]:
    module = SegmentationModule(
        net=make_net(),
        loss=CrossEntropyLoss(check_values=False),
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
        num_classes=NUM_CLASSES,
        channels_last=True,
        train_metrics=train_metrics,
    )
    timer = Timer()
    trainer = L.Trainer(
        accelerator=device, devices=1, precision=precision, max_steps=steps + 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], log_every_n_steps=10,  # as configs/trainer
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return step_times(timer.stamps)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16-mixed", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--json", default="benchmarks/results/overhead.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_overhead: --device cuda needs a CUDA GPU; run with --device cpu here")
        return {}
    data = InMemory(args.batch * (args.steps + 1), *args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=0, drop_last=True)
    variants = {
        "loop": lambda: run_loop(loader, args.steps, args.device, args.precision),
        "lightning": lambda: run_lightning(loader, args.steps, args.device, args.precision, False),
        "lightning+metrics": lambda: run_lightning(loader, args.steps, args.device, args.precision, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}  # every timed step of every round
    names = list(variants)
    for name in names:  # a discarded round: one-off kernel selection and allocator growth
        variants[name]()
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].extend(variants[name]())
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.steps} steps × {args.rounds} rounds, batch {args.batch}, {args.size[0]}×{args.size[1]}, "
          f"{args.precision}, {args.device}; median step time")  # fmt: skip
    print(f"{'variant':20s} {'ms/step':>8s} {'vs loop':>8s} {'mean ms':>8s}")
    for name in names:
        ratio = median[name] / median["loop"]
        mean = statistics.fmean(times[name])
        print(f"{name:20s} {1e3 * median[name]:8.2f} {ratio:7.3f}× {1e3 * mean:8.2f}")
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "lightning": L.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "step_seconds": times,
        "median_step_s": median,
        "ratio_to_loop": {name: median[name] / median["loop"] for name in names},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return result


# glibc's default returns big freed blocks to the OS (mmap/trim), so every step page-faults its
# activations in again: 10–20 % of a CPU step here, and noise between variants. Reusing the heap
# measures the frameworks, not the allocator (the same settings speed up CPU training: docs/benchmarks.md).
HEAP_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "536870912",
}

if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in HEAP_ENV.items()) and "--default-malloc" not in sys.argv:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **HEAP_ENV})
    main([a for a in sys.argv[1:] if a != "--default-malloc"])
