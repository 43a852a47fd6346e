"""What test-time augmentation costs (issue 27): evaluation of one frame with ``inference.tta`` against the same
net without it, timed in the same run.

    python benchmarks/bench_tta.py [--repeats 3] [--size 512 1024]

The default U-Net (19 classes, base 16, depth 3) in eval mode, one torch thread, medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segloss.models.inference import Inference
from segloss.models.nets.unet import UNet


def timed(call, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        call()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(num_classes=19, base_channels=16, depth=3).eval()
    image = torch.randn(1, 3, *args.size)
    variants = {
        "whole": Inference(),
        "tta: flip": Inference(tta=True),
        "tta: scales 0.75/1/1.25": Inference(tta={"scales": [0.75, 1.0, 1.25], "flip": False}),
        "tta: scales 0.75/1/1.25 + flip": Inference(tta={"scales": [0.75, 1.0, 1.25], "flip": True}),
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), frame 1×3×{args.size[0]}×{args.size[1]}")
    with torch.no_grad():
        base = None
        for name, inference in variants.items():
            seconds = timed(lambda inference=inference: inference(net, image), args.repeats)
            base = base or seconds
            print(f"  {name:32s} {seconds:7.3f} s   {seconds / base:5.2f}× whole")


if __name__ == "__main__":
    main()
