"""`make report`: the study as one self-contained HTML page with its figures, checked as a reader would see it.

A tiny sweep (3 losses × 3 seeds × 12 images, per-image counts with calibration bins, Hydra's overrides and
multirun.yaml) is reported once per module; the disagreement panels come from a stand-in for
``segloss.report.disagree`` (no checkpoints here). The page is rendered by headless Chromium (Debian's
``chromium``): the images load, the table is there, the screenshot is not blank and shows the heatmap.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

import segloss.report
from segloss.compare import main as compare_main
from segloss.errors import ConfigError
from segloss.report.build import STEMS, build_report
from segloss.report.cli import main
from tests.helpers.runs import CLASSES, write_run

LOSSES = {"ce": 0.6, "dice": 0.7, "<script>": 0.62}  # name → pixel hit rate; one name a reader's HTML must escape
SEEDS, IMAGES, BINS = 3, 12, 15


def fabricate(root: Path, losses: dict[str, float], calibration: bool = True, config: dict | None = None) -> Path:
    """A sweep as `make sweep` writes it, small: per run the CSV curve, the per-image TP/FP/FN (and calibration
    bins), the ECE they give, and Hydra's overrides.yaml; a multirun.yaml in the sweep folder."""
    rng = np.random.default_rng(5)
    num = 0
    for loss, hit in losses.items():
        for seed in range(SEEDS):
            truth = rng.integers(200, 400, size=(IMAGES, 2))
            tp = rng.binomial(truth, np.clip(hit + rng.normal(0, 0.02), 0, 1))
            fp, fn = rng.integers(20, 80, size=(IMAGES, 2)), truth - tp
            iou = tp.sum(0) / (tp + fp + fn).sum(0)
            count = rng.integers(0, 60, size=(IMAGES, BINS))
            middle = (np.arange(BINS) + 0.5) / BINS
            correct = rng.binomial(count, np.clip(middle * (hit + 0.3), 0, 1))
            confidence = count * middle
            ece = float(np.abs(correct.sum(0) - confidence.sum(0)).sum() / count.sum())
            scores = {"ECE": ece} if calibration else None
            run = write_run(root, num, loss, seed, [0.2, float(iou.mean())], dict(zip(CLASSES, iou)), scores,
                            config=config)  # fmt: skip
            quality = {"calib_count": count, "calib_correct": correct, "calib_confidence": confidence,
                       "nll_sum": 0.4 * count.sum(1, keepdims=True)}  # fmt: skip
            write_counts(run, tp, fp, fn, quality if calibration else {})
            (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"loss={loss}", f"seed={seed}"]))
            num += 1
    overrides = {"hydra": [f"hydra.sweep.dir={root}", "hydra.mode=MULTIRUN"],
                 "task": ["experiment=tiny", "loss=" + ",".join(losses), "seed=0,1,2"]}  # fmt: skip
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": overrides}}))
    return root


def write_counts(run: Path, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, quality: dict) -> None:
    """The ``per_image_val.npz`` of :func:`segloss.metrics.per_image.save_per_image`, written with numpy alone (that
    module imports torchmetrics: seconds this file's budget has not got), with the quality counts in ``quality``."""
    names = np.array([f"img{i:03d}" for i in range(len(tp))])
    np.savez_compressed(run / "per_image_val.npz", index=np.arange(len(tp)), names=names,
                        class_names=np.array(CLASSES[:2]), tp=tp, fp=fp, fn=fn, **quality,
                        metric=np.array("val/mIoU"), value=np.array(np.nan))  # fmt: skip


def stand_in(render_error: str | None = None) -> types.ModuleType:
    """A ``segloss.report.disagree`` of the interface: two picks, and panels drawn as plain PNGs (or the error)."""
    from PIL import Image

    module = types.ModuleType("segloss.report.disagree")

    def select_pairs(runs, loss_a, loss_b, count):
        assert {loss_a, loss_b} <= {run.loss for run in runs}
        return [{"image": f"img<{i}>", "index": i, "iou_a": 0.7, "iou_b": 0.5 - 0.1 * i, "delta": 0.2 + 0.1 * i}
                for i in range(min(count, 2))]  # fmt: skip

    def render_pairs(runs, loss_a, loss_b, picks, out):
        if render_error:
            raise ConfigError(render_error)
        out.mkdir(parents=True, exist_ok=True)
        drawn = []
        for pick in picks:
            path = out / f"{pick['index']:02d}.png"
            Image.new("RGB", (200, 40), (200, 30, 30)).save(path)
            drawn.append({**pick, "png": path})
        return drawn

    module.select_pairs, module.render_pairs = select_pairs, render_pairs
    return module


def use(module: types.ModuleType, patch: pytest.MonkeyPatch) -> None:
    patch.setitem(sys.modules, "segloss.report.disagree", module)
    patch.setattr(segloss.report, "disagree", module, raising=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    sweep = fabricate(root / "sweep", LOSSES)
    from segloss.utils.environment import record_environment

    for run in sorted(p.parent for p in sweep.rglob("per_image_val.npz"))[:6]:  # the other 3 predate the file
        record_environment(run)
    with pytest.MonkeyPatch.context() as patch:
        use(stand_in(), patch)
        page = build_report(sweep, root / "out", baseline="ce", images=2)
    compare_main([str(sweep), "--out", str(root / "cmp"), "--baseline", "ce"])
    return {"sweep": sweep, "page": page, "html": page.read_text(), "csv": root / "cmp" / "compare.csv"}


class Tables(HTMLParser):
    """The cells' text of the page's tables that carry ``data-table``, by that name (``<br>`` read as a space)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: list[list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.current = self.tables.setdefault(dict(attrs).get("data-table", "?"), [])
        elif tag == "tr" and self.current is not None:
            self.current.append([])
        elif tag in ("td", "th") and self.current is not None:
            self.current[-1].append("")
        elif tag == "br" and self.current:
            self.current[-1][-1] += " "

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None

    def handle_data(self, data):
        if self.current and self.current[-1]:
            self.current[-1][-1] += data


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


def close(cell: str, *values: str) -> bool:
    """Whether the numbers printed in ``cell`` are the CSV's ``values`` in % (to the printed digit)."""
    found = numbers(cell)
    return len(found) == len(values) and all(abs(f - 100 * float(v)) <= 0.05 + 1e-6 for f, v in zip(found, values))


def test_the_table_holds_the_numbers_of_compare_csv(report):
    parser = Tables()
    parser.feed(report["html"])
    tests, scores, classes = (parser.tables[k] for k in ("tests", "scores", "classes"))
    rows = {row["loss"]: row for row in csv.DictReader(report["csv"].open())}
    assert [row[0] for row in tests[1:]] == list(LOSSES) == list(rows)
    assert tests[0][:7] == ["loss", "seeds", "mIoU", "Δ mIoU vs ce", "p (Holm)", "MDD", "vs best"]
    assert scores[0] == ["loss", "ECE"] and classes[0] == ["class", *LOSSES]
    for cells, (loss, row) in zip(tests[1:], rows.items()):
        assert cells[1] == row["seeds"] == str(SEEDS)
        assert close(cells[2], row["mIoU_mean"], row["mIoU_ci_low"], row["mIoU_ci_high"]), (loss, cells[2])
        assert cells[6] == row["vs_best"]
        if loss == "ce":
            assert cells[3] == "baseline"
            continue
        assert close(cells[3], row["delta_mIoU"], row["delta_adj_low"], row["delta_adj_high"]), (loss, cells[3])
        assert cells[3].endswith(" *") == (row["real"] == "true")
        p = float(row["p_holm"])
        assert cells[4] == ("< 0.001" if p < 0.001 else f"{p:.3f}") and close(cells[5], row["mdd80"])
    assert rows["dice"]["real"] == "true"  # the fixture has a real difference, so the '*' is tested
    for cells, row in zip(scores[1:], rows.values()):
        assert close(cells[1], row["ECE_mean"], row["ECE_ci_low"], row["ECE_ci_high"])
    for cells in classes[1:]:
        for cell, row in zip(cells[1:], rows.values()):
            assert close(cell, *(row[f"{cells[0]}_{k}"] for k in ("mean", "ci_low", "ci_high"))), (cells[0], cell)


def test_every_figure_exists_in_three_formats_and_is_valid(report):
    folder = report["page"].parent / "figures"
    for stem in STEMS.values():
        png, pdf, svg = (folder / f"{stem}.{fmt}" for fmt in ("png", "pdf", "svg"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, stem
        assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg", stem
    assert sorted(p.name for p in (folder / "disagree").iterdir()) == ["00.png", "01.png"]
    assert not list(report["page"].parent.parent.glob(".out.*"))  # no staging folder left behind


def test_the_page_stands_alone_and_escapes_what_the_runs_say(report):
    page = report["html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<link|@import|url\(", page, re.I)
    assert page.count("<script>") == 1 and "&lt;script&gt;" in page  # ours, and the loss's name as text
    assert "img&lt;0&gt;" in page  # an image name from the counts, escaped
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len(STEMS) + 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert len(page) < 3_000_000
    sweep = report["sweep"]
    assert (f"python -m segloss.train --multirun hydra.sweep.dir={sweep} experiment=tiny "
            f"&#x27;loss=ce,dice,&lt;script&gt;&#x27; seed=0,1,2") in page  # fmt: skip
    assert "python -m segloss.train loss=dice seed=2" in page
    assert re.search(r"Config hash: <code>[0-9a-f]{12}</code> \(9 runs\)", page)  # one setting: one hash
    assert "9 runs (3 seeds × 3 losses)" in page and "3 of the runs did not record package versions" in page
    from importlib.metadata import version

    parser = Tables()
    parser.feed(page)
    (environment,) = parser.tables["environments"][1:]  # one environment (after the header row), by 6 runs
    assert environment[0] == "6" and f"torch {version('torch')}" in environment[2]
    assert "Where the losses disagree: dice vs ce" in page  # default pair: the best by mIoU vs the baseline


def test_groups_missing_calibration_and_unrenderable_panels_are_said_on_the_page(tmp_path):
    sweep = tmp_path / "sweep"
    fabricate(sweep / "a", {"ce": 0.6, "dice": 0.7}, calibration=False, config={"data": {"name": "a"}})
    fabricate(sweep / "b", {"ce": 0.6, "dice": 0.7}, calibration=False, config={"data": {"name": "b"}})
    with pytest.MonkeyPatch.context() as patch:
        use(stand_in(render_error="no checkpoints <here>"), patch)
        page = build_report(sweep, tmp_path / "out", pair="ce,dice", formats=("png",)).read_text()
    assert "Group: data.name=a" in page and "Group: data.name=b" in page
    assert page.count("No reliability diagrams: the runs stored no calibration counts") == 2
    assert page.count("No panels: no checkpoints &lt;here&gt;") == 2 and "ce vs dice" in page
    figures = tmp_path / "out" / "figures"
    assert (figures / "data.name=a" / "miou_curves.png").is_file()
    assert not list(figures.rglob("*.pdf"))


def test_mistakes_are_one_line_errors_and_write_nothing(report, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "empty")], "no finished runs under"),
        ([str(report["sweep"]), "--pair", "ce,focal"], "--pair 'ce,focal': 'focal' is no compared loss; give two"),
        ([str(report["sweep"]), "--baseline", "focal"], "--baseline 'focal' is not among"),
        ([str(report["sweep"]), "--out", str(busy)], "holds other files than a report"),
        ([str(report["sweep"]), "--formats", "png,gif"], "give some of png,pdf,svg"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
        with pytest.raises(SystemExit) as stop:
            main([*args, *out])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and message in err and err.count("\n") == 0, (args, err)
    assert not (tmp_path / "new").exists() and [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: the report's browser test needs Debian's chromium package "
                        "(apt-get install chromium; `make test` installs it)")  # fmt: skip
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page was not rendered")
    command = [found, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--user-data-dir=" + str(Path(args[-1]).parent / "chromium-profile"), *args[:-1],
               f"file://{args[-1]}"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_chromium_renders_the_page_with_every_image_and_the_table(report, tmp_path):
    import matplotlib
    from PIL import Image

    page = str(report["page"])
    dom = chromium("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    shown = {k: int(v) for k, v in re.findall(r'data-images-(\w+)="(\d+)"', body)}
    assert shown == {"ok": len(STEMS) + 2, "broken": 0, "total": len(STEMS) + 2}, body
    assert "Δ mIoU vs ce" in dom.stdout and "&lt;script&gt;" in dom.stdout and "IoU per class" in dom.stdout
    shot = tmp_path / "page.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1200,3000", page)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert (pixels.min(1) < 235).mean() > 0.05  # not a blank page
    packed, counts = np.unique((pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2], return_counts=True)
    colours = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1)
    viridis = (255 * np.asarray(matplotlib.colormaps["viridis"](np.linspace(0.15, 0.95, 64)))[:, :3]).astype(int)
    near = np.abs(colours[:, None, :] - viridis[None]).max(2).min(1) <= 6  # the heatmap's cells
    levels = np.abs(colours[near][:, None, :] - viridis[None]).max(2).argmin(1)
    assert counts[near].sum() > 2000 and len(set(levels // 8)) >= 3, counts[near].sum()


def test_a_killed_report_s_partial_folder_is_removed_by_the_next_and_a_running_one_s_is_kept(tmp_path):
    from segloss.report.build import staging

    killed = tmp_path / ".report.partial-99999999-0a1b2c3d"  # above any pid_max: its process is gone
    running = tmp_path / f".report.partial-{os.getpid()}-0a1b2c3d"  # this process: still writing
    for folder in (killed, running):
        (folder / "figures").mkdir(parents=True)
    with staging(tmp_path / "report") as tmp:
        (tmp / "report.html").write_text("page")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "report"]
    assert (tmp_path / "report" / "report.html").read_text() == "page"
