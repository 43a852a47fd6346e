"""What volumes and the CRF cost (issue 26): forward + backward of the 3D distance/skeleton presets and of the
dense-CRF loss, each as a ratio to a reference loss timed in the same run.

    python benchmarks/bench_volumes.py [--repeats 11] [--threads 1]

- 3D: ``dice_ce``, ``boundary_gdl``, ``hausdorff_dt``, ``cldice`` presets on a 2×2×32×64×64 batch (two ellipsoids,
  two ignored slices), relative to ``dice_ce``;
- CRF: ``ce_crf``'s ``DenseCRFLoss`` (scale 0.5, radius 5; radius 2; scale 1) on 2×19×128×256 logits with an RGB
  image, relative to cross-entropy.
Medians of ``--repeats`` timed calls after one warm-up; the presets are built from configs/loss/*.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from segloss.losses import CrossEntropyLoss, DenseCRFLoss
from segloss.utils.config import CONFIG_DIR
from segloss.utils.loss_family import without_family


def preset(name: str):
    node = OmegaConf.merge({"data": {"ignore_index": 255, "num_classes": 2}},
                           {"loss": OmegaConf.load(Path(CONFIG_DIR) / "loss" / f"{name}.yaml")})  # fmt: skip
    return hydra.utils.instantiate(without_family(node.loss))


def timed(call, logits: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        x = logits.clone().requires_grad_()
        start = time.perf_counter()
        call(x).backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def volumes(repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 32, 64, 64, generator=g)
    z, y, x = torch.meshgrid(torch.arange(32), torch.arange(64), torch.arange(64), indexing="ij")
    target = torch.zeros(2, 32, 64, 64, dtype=torch.long)
    target[0][((z - 16) / 10) ** 2 + ((y - 30) / 20) ** 2 + ((x - 34) / 18) ** 2 <= 1] = 1
    target[1][((z - 12) / 8) ** 2 + ((y - 40) / 15) ** 2 + ((x - 20) / 12) ** 2 <= 1] = 1
    target[:, :2] = 255
    losses = {name: preset(name) for name in ("dice_ce", "boundary_gdl", "hausdorff_dt", "cldice")}
    losses["boundary_gdl"].set_progress(0, 50)  # the boundary term at its scheduled weight
    base = timed(lambda t: losses["dice_ce"](t, target), logits, repeats)
    print(f"volumes: batch {tuple(logits.shape)}, medians of {repeats}")
    for name, loss in losses.items():
        ms = base if name == "dice_ce" else timed(lambda t, loss=loss: loss(t, target), logits, repeats)
        print(f"  {name:14s} {1000 * ms:8.1f} ms   {ms / base:5.1f}× dice_ce")


def crf(repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 128, 256, generator=g)
    target = torch.randint(0, 19, (2, 128, 256), generator=g)
    image = torch.rand(2, 3, 128, 256, generator=g) * 255
    ce = CrossEntropyLoss()
    base = timed(lambda t: ce(t, target), logits, repeats)
    print(f"CRF loss: logits {tuple(logits.shape)}, medians of {repeats}")
    print(f"  {'cross-entropy':26s} {1000 * base:8.1f} ms   1.0× CE")
    variants = {"DenseCRFLoss (0.5, r=5)": DenseCRFLoss(), "DenseCRFLoss (0.5, r=2)": DenseCRFLoss(radius=2),
                "DenseCRFLoss (1, r=5)": DenseCRFLoss(scale=1.0)}  # fmt: skip
    for label, loss in variants.items():
        ms = timed(lambda t, loss=loss: loss(t, target, image=image), logits, repeats)
        print(f"  {label:26s} {1000 * ms:8.1f} ms   {ms / base:5.1f}× CE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    volumes(args.repeats)
    crf(args.repeats)


if __name__ == "__main__":
    main()
