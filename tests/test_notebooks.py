"""Execute every ``notebooks/*.ipynb`` on CPU with nbclient and check a few printed values.

Each notebook runs in a fresh ``python3`` kernel of the current interpreter (a kernel spec written to
a temporary ``JUPYTER_PATH``, so no user-level or global spec can shadow it), with its own folder as
the working directory and ``SEGLOSS_NOTEBOOK_TEST=1`` in the environment: a notebook that needs
inputs (e.g. ``SEGLOSS_SWEEP_DIR``) decides from that variable what to do without them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client import kernelspec

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernel spec that launches ipykernel with ``sys.executable`` (this venv)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (segloss tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before user and system paths
    monkeypatch.setenv("SEGLOSS_NOTEBOOK_TEST", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let ipykernel pick its inline backend
    found = kernelspec.KernelSpecManager().get_kernel_spec("python3")
    assert Path(found.resource_dir) == spec_dir and found.argv[0] == sys.executable
    return "python3"


def printed_text(nb) -> str:
    """Everything the notebook's code cells wrote to stdout/stderr, in order."""
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "stream"
    )


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*(-?\d+\.\d+)", text)
    assert match, f"{label!r} not printed"
    return float(match.group(1))


def check_loss_functions(text: str) -> None:
    # sigmoid, y = 1, p = 0.01: MSE 2(p − y)p(1 − p) = −0.019602 against CE p − y = −0.99
    mse = number_after("MSE gradient at p=0.01 (y=1):", text)
    ce = number_after("CE gradient at p=0.01 (y=1):", text)
    assert mse == pytest.approx(-0.019602, abs=2e-6)
    assert ce == pytest.approx(-0.99, abs=2e-6)
    assert abs(mse) < abs(ce) / 50
    # softmax, C = 3, logits (m, 0, 0), p_t = 0.01: (2/3)·0.01·(−0.99 − 0.48015) = −0.009801
    soft_mse = number_after("softmax MSE gradient at p_t=0.01 (C=3), true-class logit:", text)
    soft_ce = number_after("softmax CE gradient at p_t=0.01 (C=3), true-class logit:", text)
    assert soft_mse == pytest.approx(-0.009801, abs=2e-6)
    assert soft_ce == pytest.approx(-0.99, abs=2e-6)
    assert "18 losses match their closed forms" in text
    # 2 % object: pixel-wise losses rank the over-segmentation worst, region losses the miss
    worst_line = re.search(r"worst prediction by loss: (.*)", text)
    assert worst_line, "ranking not printed"
    worst = dict(item.rsplit("=", 1) for item in worst_line.group(1).split(", "))
    assert worst["CE"] == worst["focal γ=2"] == "over-segmented"
    assert {worst[name] for name in ("Dice", "Dice fg only", "Tversky .3/.7", "Jaccard", "Lovász")} == {"miss"}
    table_rows = re.finditer(r"^\((\w)\) \S+\s+(.*)$", text, re.MULTILINE)
    rows = {m.group(1): [float(v) for v in m.group(2).split()] for m in table_rows}
    assert rows["a"][0] == pytest.approx(0.02 * 4.60517 + 0.98 * 0.0100503, abs=1e-4)  # CE of the miss
    assert rows["c"][3] == pytest.approx(1 - 99 / 124, abs=1e-4)  # soft Dice of the object, good prediction


CHECKS: dict[str, Callable[[str], None]] = {"loss_functions.ipynb": check_loss_functions}


def test_loss_functions_notebook_is_collected():
    assert "loss_functions.ipynb" in {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes(path, python3_kernel):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell (an `assert` included)
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    if path.name in CHECKS:
        CHECKS[path.name](printed_text(nb))
