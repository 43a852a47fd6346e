"""A training on a shared CPU: ``threads=auto`` against a fixed thread count, alone and beside a busy process.

    python benchmarks/bench_shared_cpu.py [--epochs 2] [--repeat 1] [--skip-fixed-busy] [--late]

Each scenario is one ``python -m segloss.train trainer.max_epochs=E`` of the default experiment (what
``make train ARGS="trainer.max_epochs=E"`` runs), in a temporary log folder, timed as a whole process:

* ``auto alone`` and ``auto busy``: ``threads=auto`` (segloss.utils.threads), alone and with one other process
  spinning on a core (``python -c "while True: pass"``, started before the training);
* ``fixed alone`` and ``fixed busy``: ``threads=N``, one thread per usable CPU — torch's own default, what
  every training did before ``threads=auto`` — the reference, measured in the same run;
* ``auto late`` (``--late``): the busy process starts ``--late-after`` seconds into the training, so the
  thread count has to follow it (the training says when it changes).

Prints each scenario's median wall time and the ratios (targets: auto busy / auto alone ≤ 1.5, auto alone /
fixed alone ≈ 1) and writes JSON. Scenarios take turns within each repeat, so they share the machine's drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segloss.utils.environment import cpu_model

BUSY = [sys.executable, "-c", "while True: pass"]


def train_command(epochs: int, threads: str, log_dir: Path) -> list[str]:
    return [sys.executable, "-m", "segloss.train", f"trainer.max_epochs={epochs}", f"threads={threads}",
            f"paths.log_dir={log_dir}"]  # fmt: skip


def timed(command: list[str], busy: bool, late_after: float | None = None) -> tuple[float, list[str]]:
    """Wall seconds of ``command`` and the lines it said about threads; a busy process beside it if asked."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # OMP_NUM_THREADS would fix the count
    spinner = subprocess.Popen(BUSY) if busy and late_after is None else None
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        if late_after is not None:
            time.sleep(late_after)
            spinner = subprocess.Popen(BUSY)
        out, _ = proc.communicate()
        seconds = time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{out[-2000:]}")
    return seconds, [line for line in out.splitlines() if line.startswith("segloss: thread")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-fixed-busy", action="store_true", help="leave out the slow reference beside a busy one")
    parser.add_argument("--late", action="store_true", help="also: a busy process that starts during the training")
    parser.add_argument("--late-after", type=float, default=8.0)
    parser.add_argument("--json", default="benchmarks/results/shared_cpu.json")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    scenarios = {"auto alone": ("auto", False, None), "fixed alone": (str(cpus), False, None),
                 "auto busy": ("auto", True, None)}  # fmt: skip
    if not args.skip_fixed_busy:
        scenarios["fixed busy"] = (str(cpus), True, None)
    if args.late:
        scenarios["auto late"] = ("auto", True, args.late_after)
    seconds, said = {name: [] for name in scenarios}, {}
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(args.repeat):
            for name, (threads, busy, late) in scenarios.items():
                took, lines = timed(train_command(args.epochs, threads, Path(logs) / "logs"), busy, late)
                seconds[name].append(took)
                said[name] = lines
                print(f"{name:<12} {took:7.1f} s  {' | '.join(lines)}", flush=True)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    ratios = {"auto busy / auto alone": median["auto busy"] / median["auto alone"],
              "auto alone / fixed alone": median["auto alone"] / median["fixed alone"]}  # fmt: skip
    if "fixed busy" in median:
        ratios["fixed busy / fixed alone"] = median["fixed busy"] / median["fixed alone"]
        ratios["fixed busy / auto busy"] = median["fixed busy"] / median["auto busy"]
    if "auto late" in median:
        ratios["auto late / auto alone"] = median["auto late"] / median["auto alone"]
    print(f"\n{args.epochs}-epoch training, {cpus} CPUs, median of {args.repeat}:")
    for name, value in median.items():
        print(f"  {name:<26} {value:7.1f} s")
    for name, value in ratios.items():
        print(f"  {name:<26} {value:7.2f}×")
    result = {"machine": cpu_model(), "cpus": cpus, "settings": vars(args),
              "seconds": seconds, "median_s": median, "ratios": ratios, "said": said}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
