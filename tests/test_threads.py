"""The intra-op thread count on a shared CPU (segloss.utils.threads) and the callback that follows the load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from segloss.callbacks import ThreadsFollowLoad
from segloss.utils import threads as T

STAT = """cpu  900 0 300 5000 100 0 0 0 0 0
cpu0 {u0} 0 {s0} 2500 50 0 0 {st0} 0 0
cpu1 400 0 100 2500 50 0 0 0 0 0
intr 12345
"""


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cgroup_quota_is_read_in_both_versions(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert T.cgroup_cpus(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert T.cgroup_cpus(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert T.cgroup_cpus(v1) == 3.0
    assert T.cgroup_cpus(tmp_path / "absent") is None


def test_the_quota_is_read_in_the_process_own_cgroup(tmp_path):
    nested = tmp_path / "system.slice" / "slurmstepd.scope" / "job_7"
    nested.mkdir(parents=True)
    (nested / "cpu.max").write_text("200000 100000\n")
    assert T.own_cgroup(tmp_path, "0::/system.slice/slurmstepd.scope/job_7\n") == nested
    assert T.cgroup_cpus(T.own_cgroup(tmp_path, "0::/system.slice/slurmstepd.scope/job_7\n")) == 2.0
    assert T.own_cgroup(tmp_path, "0::/elsewhere\n") == tmp_path  # no such folder: the root's
    assert T.own_cgroup(tmp_path, "4:memory:/x\n1:cpu:/\n") == tmp_path  # cgroup v1 only


def test_the_usable_cpus_are_the_tightest_limit_shared_by_processes_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "affinity_cpus", lambda: set(range(16)))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs: 3 threads may run, the last part-time
    assert T.usable_cpus(root=tmp_path) == (3, "3 CPUs by cgroup quota")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert T.usable_cpus(root=tmp_path) == (2, "2 CPUs by SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    expected = (3, "16 CPUs by affinity / 4 processes − 1 loader worker")
    assert T.usable_cpus(processes=4, workers=1, root=tmp_path) == expected
    assert T.usable_cpus(processes=1, workers=40, root=tmp_path)[0] == 1  # never fewer than one thread


def test_load_elsewhere_is_the_cpus_busy_time_less_this_process_tree():
    cpus = {0, 1}
    before = T.sample(cpus, STAT.format(u0=500, s0=200, st0=0), own=100)
    # 1 s at 100 ticks/s: cpu0 gains 150 busy ticks (50 of them steal), this process 40 → 110 ticks elsewhere
    after = T.sample(cpus, STAT.format(u0=580, s0=220, st0=50), own=140)
    assert (before.cpus_busy, after.cpus_busy) == (1200, 1350)
    assert T.busy_elsewhere(before, after, seconds=100 / T.CLOCK_TICKS) == pytest.approx(1.1)
    only_cpu1 = T.sample({1}, STAT.format(u0=9999, s0=0, st0=0), own=0)
    assert only_cpu1.cpus_busy == 500  # CPUs outside the affinity are not counted
    assert T.busy_elsewhere(after, before, seconds=1.0) == 0.0  # never negative


@pytest.mark.parametrize("usable,others,expected", [
    (2, 0.0, 2), (2, 0.25, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 5.0, 1), (8, 2.1, 6), (8, 2.3, 5),
])  # fmt: skip
def test_a_cpu_counts_as_taken_from_a_quarter_of_its_time(usable, others, expected):
    assert T.threads_for(usable, others) == expected


def _burn(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads Linux's /proc")
def test_this_process_and_its_children_are_counted_as_its_own():
    start = T.own_ticks()
    _burn(0.3)  # CPU time, not wall time: the same on an idle or a loaded machine
    assert T.own_ticks() - start >= 0.25 * T.CLOCK_TICKS
    code = ("import sys, time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass\n"
            "print('done', flush=True)\ntime.sleep(30)")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert str(child.pid) in T._children() and str(child.pid) in T.children_by_parent()  # either way
        before = T.own_ticks()
        assert child.stdout.readline().strip() == "done"
        assert T.own_ticks() - before >= 0.2 * T.CLOCK_TICKS  # the child's burn, while it is alive
    finally:
        child.kill()
        child.wait()


def test_a_fixed_count_and_omp_num_threads_win(monkeypatch, restore_threads):
    from segloss.errors import ConfigError

    for wrong in (0, "many", True):  # predict composes no Trainer: the count is checked here too
        with pytest.raises(ConfigError, match=r"threads=.* must be auto or a number of threads ≥ 1"):
            T.configure_threads({"threads": wrong})
    said = []
    assert T.configure_threads({"threads": 3}, announce=said.append) is None
    assert torch.get_num_threads() == 3 and said == []
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert T.configure_threads({"threads": "auto"}, announce=said.append) is None
    assert said == ["threads=auto: OMP_NUM_THREADS=1 in the environment fixes the count (1 intra-op thread)"]


def test_auto_takes_the_busy_cpus_off_and_says_so_once(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "FIRST_LOOK_S", 0.0)
    monkeypatch.setattr(T, "usable_cpus", lambda processes, workers: (4, f"4 CPUs by affinity, {workers} workers"))
    ticks = iter([T.CpuSample(0, 0), T.CpuSample(300, 80)])  # 2.2 CPUs elsewhere over 1 s
    monkeypatch.setattr(T, "sample", lambda cpus: next(ticks))
    clock = iter([10.0, 10.0 + 100 / T.CLOCK_TICKS])
    monkeypatch.setattr(T, "clock", lambda: next(clock))
    said = []
    chooser = T.configure_threads({"threads": "auto", "data": {"num_workers": 2}}, announce=said.append)
    assert chooser is not None and torch.get_num_threads() == 2  # 4 − ceil(2.2 − 0.25)
    assert said == ["threads=auto → 2 intra-op threads: 4 usable (4 CPUs by affinity, 2 workers), 2.2 CPUs busy "
                    "elsewhere; followed during training (set threads=N to fix the count)"]  # fmt: skip


class ScriptedChooser:
    def __init__(self, choices):
        self.choices, self.at = iter(choices), float("-inf")

    def choose(self):
        return next(self.choices), 0.0


def test_the_training_drops_threads_at_once_and_adds_them_after_two_looks(restore_threads, capsys):
    torch.set_num_threads(2)
    follow = ThreadsFollowLoad(ScriptedChooser([1, 2, 2, 1]), every_s=0.0)
    trainer = SimpleNamespace(is_global_zero=True)
    seen = []
    for _ in range(4):
        follow.on_train_batch_end(trainer, None, None, None, 0)
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 2, 1]
    assert capsys.readouterr().out.splitlines() == [
        "segloss: threads 2 → 1 (0.0 CPUs busy elsewhere)", "segloss: threads 1 → 2 (0.0 CPUs busy elsewhere)",
        "segloss: threads 2 → 1 (0.0 CPUs busy elsewhere)"]  # fmt: skip


def test_the_other_ranks_of_a_cpu_ddp_training_are_not_load_elsewhere(monkeypatch):
    """8 CPUs, 2 ranks with 4 each: the sibling rank busy on its 4 is its own share, a fifth busy CPU is not."""
    ticks = iter([T.CpuSample(0, 0), T.CpuSample(400 + 50, 50), T.CpuSample(900 + 100, 100)])  # per 1 s at 100 Hz
    monkeypatch.setattr(T, "sample", lambda cpus: next(ticks))
    clock = iter([0.0, 100 / T.CLOCK_TICKS, 200 / T.CLOCK_TICKS])
    monkeypatch.setattr(T, "clock", lambda: next(clock))
    chooser = T.ThreadChooser(4, "8 CPUs by affinity / 2 processes", siblings_cpus=4)
    assert chooser.choose() == (4, 0.0)  # only the sibling rank was busy
    threads, others = chooser.choose()
    assert (threads, others) == (3, pytest.approx(1.0))  # the sibling, and one CPU more elsewhere
