"""benchmarks/bench_shared_cpu.py: the harness that times a training beside a busy process."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import load_benchmark

bench = load_benchmark("bench_shared_cpu")


def test_the_training_command_is_what_make_train_runs(tmp_path):
    command = bench.train_command(2, "auto", tmp_path)
    assert command == [sys.executable, "-m", "segloss.train", "trainer.max_epochs=2", "threads=auto",
                       f"paths.log_dir={tmp_path}"]  # fmt: skip


def test_the_busy_process_runs_beside_the_command_and_is_gone_after(tmp_path, monkeypatch):
    marker = tmp_path / "spinner.pid"
    spin = f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\nwhile True: pass"
    monkeypatch.setattr(bench, "BUSY", [sys.executable, "-c", spin])
    said = "print('segloss: threads=auto → 1 intra-op thread'); print('other')"
    wait = f"import pathlib, time\nwhile not pathlib.Path({str(marker)!r}).exists(): time.sleep(0.01)\n{said}"
    seconds, lines = bench.timed([sys.executable, "-c", wait], busy=True)
    assert seconds > 0 and lines == ["segloss: threads=auto → 1 intra-op thread"]  # it ran while the spinner did
    with pytest.raises(ProcessLookupError):  # killed and reaped when the command ended
        os.kill(int(marker.read_text()), 0)
