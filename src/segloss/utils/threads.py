"""How many intra-op threads torch runs on a CPU that other processes may share, and how they wait.

Why: torch splits each CPU operator over its intra-op threads and waits for the slowest at the end. When
another process keeps one of the cores busy, the thread that shares that core gets half of it, in time
slices of milliseconds, and every operator waits for it; the other threads spin meanwhile. Measured on a
2-core machine (docs/benchmarks.md, "Threads on a shared machine"): a 2-epoch training took 11.5× as long
beside one busy process as alone with 2 threads, but about 1.4× with 1 thread.

The choice, said once at start-up (like ``trainer.precision=auto``):

- **Usable CPUs** = the fewest of: the CPUs this process may run on (``sched_getaffinity``), the cgroup's CPU
  quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` in v1; rounded up) and
  ``SLURM_CPUS_PER_TASK``; then shared by the training processes of this machine (CPU DDP) and minus one per
  data-loader worker (a worker keeps a CPU busy decoding).
- **Busy elsewhere** = the CPU time other processes used on those CPUs over a short window: the busy time
  of the CPUs in ``/proc/stat`` minus this process's own and its children's (``/proc/self``), in CPUs.
- **Threads** = usable − busy elsewhere (a CPU counts as taken from 0.25 of one on), at least 1. A training
  looks again every :data:`EVERY_S` seconds (:class:`segloss.callbacks.ThreadsFollowLoad`), so a job that
  starts beside it later, or ends, is followed within seconds.
- **Waiting** is left to OpenMP's default (spin briefly, then sleep): ``OMP_WAIT_POLICY=PASSIVE`` made a
  training alone 1.22× slower on 2 cores and does not cure a thread that shares its core; fewer threads do.

``threads=N`` in the config (or ``OMP_NUM_THREADS`` in the environment) fixes the count and turns the
following off; ``threads=auto`` is the default.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

TAKEN_FROM = 0.25  # of one CPU used by others: that CPU is not counted as free
FIRST_LOOK_S = 0.2  # the window of the first measurement, at start-up
EVERY_S = 5.0  # a training measures again this often
clock = time.monotonic
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def own_cgroup(root: Path = Path("/sys/fs/cgroup"), membership: str | None = None) -> Path:
    """This process's cgroup v2 folder (``0::/path`` of ``/proc/self/cgroup``; a SLURM step or a systemd unit
    is nested), or ``root`` where it cannot be told."""
    membership = _read(Path("/proc/self/cgroup")) if membership is None else membership
    for line in (membership or "").splitlines():
        if line.startswith("0::"):
            nested = root / line[3:].strip().lstrip("/")
            return nested if (nested / "cpu.max").is_file() else root
    return root


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``None``: no quota)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def affinity_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def usable_cpus(processes: int = 1, workers: int = 0, root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """``(n, why)``: the CPUs one of ``processes`` training processes may use, less its loader ``workers``."""
    limits = {"affinity": len(affinity_cpus())}
    quota = cgroup_cpus(own_cgroup(root))
    if quota is not None:
        limits["cgroup quota"] = max(1, math.ceil(quota - 1e-9))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    source = min(limits, key=limits.get)
    n = limits[source] // max(1, processes)
    why = f"{plural(limits[source], 'CPU')} by {source}" + (f" / {processes} processes" if processes > 1 else "")
    if workers:
        why += f" − {plural(workers, 'loader worker')}"
    return max(1, n - workers), why


@dataclass
class CpuSample:
    """Cumulative busy ticks of a set of CPUs, and of this process, at one moment."""

    cpus_busy: int
    own: int


def _ticks(stat: str) -> int:
    """utime + stime (all threads) of one ``/proc/<pid>/stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _children() -> list[str]:
    """This process's child pids: from ``/proc/self/task/*/children`` where the kernel offers it, else by the
    parent pid of every process (kernels built without CONFIG_PROC_CHILDREN)."""
    lists = list(Path("/proc/self/task").glob("*/children"))
    if lists:
        return [pid for path in lists for pid in (_read(path) or "").split()]
    return children_by_parent()


def children_by_parent() -> list[str]:
    """Child pids found by the parent pid field of every ``/proc/<pid>/stat``."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        text = _read(stat)
        if text and text.rsplit(")", 1)[1].split()[1] == me:
            found.append(stat.parent.name)
    return found


def own_ticks() -> int | None:
    """CPU ticks of this process and its children (data-loader workers are this process's, not others')."""
    own = _read(Path("/proc/self/stat"))
    if own is None:
        return None
    total = _ticks(own)
    for pid in _children():
        child = _read(Path("/proc") / pid / "stat")
        total += _ticks(child) if child else 0
    return total


def sample(cpus: set[int], stat: str | None = None, own: int | None = None) -> CpuSample | None:
    """Read ``/proc/stat`` and this process's ticks (``None`` where /proc does not exist: not Linux)."""
    stat = _read(Path("/proc/stat")) if stat is None else stat
    own = own_ticks() if own is None else own
    if stat is None or own is None:
        return None
    busy = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields]
            busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest is inside user)
    return CpuSample(busy, own)


def busy_elsewhere(before: CpuSample, after: CpuSample, seconds: float) -> float:
    """CPUs' worth of time that other processes used between two samples."""
    if seconds <= 0:
        return 0.0
    others = (after.cpus_busy - before.cpus_busy) - (after.own - before.own)
    return max(0.0, others / CLOCK_TICKS / seconds)


def threads_for(usable: int, others: float) -> int:
    """Usable CPUs less those others occupy (one from :data:`TAKEN_FROM` of its time on), at least 1."""
    return max(1, usable - math.ceil(max(0.0, others - TAKEN_FROM)))


class ThreadChooser:
    """Chooses (and re-chooses) torch's intra-op thread count from the usable CPUs and the load on them."""

    def __init__(self, usable: int, why: str, siblings_cpus: int = 0):
        """``siblings_cpus``: the CPUs the other processes of this training (CPU DDP ranks and their loader
        workers) were given; their load is not "elsewhere", their share is already off ``usable``."""
        self.usable, self.why, self.cpus, self.siblings_cpus = usable, why, affinity_cpus(), siblings_cpus
        self.last, self.at = sample(self.cpus), clock()

    def measure(self) -> float | None:
        """Others' load since the previous call (``None`` where /proc cannot be read)."""
        now, at = sample(self.cpus), clock()
        if now is None or self.last is None:
            return None
        others = max(0.0, busy_elsewhere(self.last, now, at - self.at) - self.siblings_cpus)
        self.last, self.at = now, at
        return others

    def choose(self) -> tuple[int, float | None]:
        others = self.measure()
        return (self.usable if others is None else threads_for(self.usable, others)), others


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def describe(threads: int, usable: int, why: str, others: float | None) -> str:
    load = "load elsewhere unknown" if others is None else f"{others:.1f} CPUs busy elsewhere"
    return (f"threads=auto → {plural(threads, 'intra-op thread')}: {usable} usable ({why}), {load}; followed "
            "during training (set threads=N to fix the count)")  # fmt: skip


def configure_threads(cfg, processes: int = 1, announce=print) -> ThreadChooser | None:
    """Set torch's intra-op threads for a run of ``cfg`` (``threads: auto|N``) and say the choice once.

    Returns the chooser that a training keeps following the load with, or ``None`` when the count is fixed
    (``threads=N``, or ``OMP_NUM_THREADS`` in the environment, which torch already applied)."""
    import torch

    value = cfg.get("threads", "auto")
    if value != "auto":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            from segloss.errors import ConfigError

            raise ConfigError(f"threads={value!r} must be auto or a number of threads ≥ 1 (e.g. threads=2)")
        torch.set_num_threads(value)
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        announce(f"threads=auto: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} in the environment fixes the count "
                 f"({plural(torch.get_num_threads(), 'intra-op thread')})")  # fmt: skip
        return None
    workers = int(_select(cfg, "data.num_workers") or 0)
    usable, why = usable_cpus(processes, workers)
    chooser = ThreadChooser(usable, why, siblings_cpus=(max(1, processes) - 1) * (usable + workers))
    time.sleep(FIRST_LOOK_S)  # this process idle: what is busy now is busy elsewhere
    threads, others = chooser.choose()
    torch.set_num_threads(threads)
    announce(describe(threads, usable, why, others))
    return chooser


def _select(cfg, key: str):
    """``cfg.a.b`` or ``None`` (works on a DictConfig and a plain dict)."""
    node = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return None
    return node
