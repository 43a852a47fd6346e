"""The report as one HTML page: inline CSS, figures as PNG ``data:`` URIs, no external resources.

Every text that comes from the runs (loss names, paths, commands, config values) is escaped with
:func:`html.escape`; the markup here is the only markup. A small inline script writes, on ``load``, how many
``<img>`` elements loaded (``complete`` with a natural width) and how many did not into ``<body>``'s
``data-images-ok`` / ``data-images-broken`` / ``data-images-total``, so a headless browser's ``--dump-dom`` shows
whether the page renders; before printing it unfolds the ``<details>`` (every run's command, the shared settings).
The comparison table's cells come from :mod:`segloss.comparison.table`, the functions
``make compare`` writes its table with.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape

from segloss.comparison.table import header, paired_columns, row_cells, table_note
from segloss.report.figures import Figure
from segloss.report.provenance import HASH_CHARS, Provenance

CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; color: #1a1a1a;
       max-width: 1180px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; font-size: 15px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.6em; }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 0.85em; }
pre { background: #f5f5f5; padding: 0.5em; white-space: pre-wrap; word-break: break-all; }
.meta { color: #555; } .how { color: #444; font-style: italic; margin: 0.3em 0 0.8em; }
.note { color: #444; font-size: 0.9em; } .missing { background: #fff6e0; border-left: 4px solid #e0a000;
        padding: 0.5em 0.8em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 0.4em 0; }
th, td { border: 1px solid #d0d0d0; padding: 3px 6px; text-align: right; white-space: nowrap; vertical-align: top; }
th { background: #efefef; } td.name, th.name { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
td strong { color: #0b5d1e; }
table[data-table="classes"] { font-size: 11.5px; } table[data-table="classes"] td { padding: 2px 4px; }
figure { margin: 1em 0; break-inside: avoid; page-break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #333; max-width: 60em; }
.legend { font-size: 0.85em; line-height: 1.9; } .swatch { margin-right: 0.9em; white-space: nowrap; }
.swatch i { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: -0.1em;
            border: 1px solid #999; print-color-adjust: exact; -webkit-print-color-adjust: exact; }
details { margin: 0.5em 0; } summary { cursor: pointer; font-weight: bold; }
@media print {
  body { max-width: none; font-size: 11px; margin: 0; } .scroll { overflow: visible; }
  table, table[data-table="classes"] { font-size: 8px; } th, td { padding: 1px 3px; }
  h2 { break-before: page; } h2.first { break-before: auto; }
  pre { white-space: pre-wrap; }
}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var ok = 0, broken = 0, images = document.images;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; } else { broken++; }
  }
  document.body.dataset.imagesOk = String(ok);
  document.body.dataset.imagesBroken = String(broken);
  document.body.dataset.imagesTotal = String(images.length);
});
window.addEventListener("beforeprint", function () {  // a printout shows the folded tables too
  document.querySelectorAll("details").forEach(function (part) { part.open = true; });
});
"""

HOW = {
    "table": "Scores in % at each run's best epoch, mean over seeds; the brackets are 95 % intervals over seeds × "
    "images. Δ compares each loss with the baseline; * marks a real difference (Holm-adjusted p < α); bold: the "
    "best mean of a column.",
    "forest": "Dots right of the line: better than the baseline. An interval that excludes 0 (filled dot, *) is "
    "a real difference after Holm's correction over all the losses compared with the baseline.",
    "heatmap": "Rows: losses; columns: mIoU, then each class. Brighter is better; compare down a column to see "
    "which loss wins a class.",
    "calibration": "A bar on the diagonal is calibrated; below it the net is over-confident, above it "
    "under-confident. Pale bars hold few pixels: their accuracy is noisy.",
    "curves": "Whether the runs had converged: a curve still rising at the last epoch would gain from longer "
    "training; a wide band means the seeds disagree.",
    "disagree": "The images where the two losses' per-image IoUs differ most (mean over seeds): what the mean "
    "difference is made of.",
    "provenance": "How to reproduce the runs: the commands, and a hash of the settings they share.",
}


@dataclass
class Disagreement:
    """The "where the losses disagree" part of a group: the pair, the picked images (dicts of
    :func:`segloss.report.disagree.select_pairs`, with ``png`` bytes once rendered) and why something is missing."""

    loss_a: str | None = None
    loss_b: str | None = None
    picks: list[dict] = field(default_factory=list)
    reason: str | None = None  # no pair or no picks
    images_reason: str | None = None  # picks, but no panels
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)  # the panels' class colours


@dataclass
class Section:
    """One group of comparable runs: its label, summary, figures (or why each is missing), disagreement and
    provenance."""

    label: str
    summary: dict
    runs_text: str
    figures: dict[str, Figure | str]  # key → figure, or why it is not drawn
    disagreement: Disagreement
    provenance: Provenance
    notes: list[str] = field(default_factory=list)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(head: list[str], rows: list[list[str]], names: int = 1, kind: str = "") -> str:
    """An HTML table; the cells are already escaped markup; the first ``names`` columns are left-aligned;
    ``kind`` is its ``data-table`` attribute (which of the report's tables it is)."""
    th = "".join(f"<th{' class=name' if i < names else ''}>{cell}</th>" for i, cell in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=name' if i < names else ''}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    attribute = f' data-table="{kind}"' if kind else ""
    return f'<div class="scroll"><table{attribute}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _stacked(cell: str) -> str:
    """A score cell on two lines, the mean above its interval (or spread), for a narrow column."""
    return cell.replace(" [", "<br>[", 1).replace(" ± ", "<br>± ", 1)


def comparison_tables(summary: dict) -> str:
    """``make compare``'s table as three HTML tables with the very cells of ``compare.md``
    (:func:`segloss.comparison.table.row_cells`): mIoU and the tests against the baseline; the other scores; and
    the per-class IoU turned a quarter (a row per class, a column per loss), so that each fits a page."""
    head = [escape(name) for name in header(summary)]
    rows = {loss: row_cells(summary, loss, "<strong>{}</strong>", escape) for loss in summary["losses"]}
    tests, extra = len(paired_columns(summary)), len(summary.get("extra", []))
    first, second = 3 + tests, 3 + tests + extra  # loss, seeds, mIoU, tests | other scores | classes
    parts = [_table(head[:first], [row[:first] for row in rows.values()], kind="tests")]
    if extra:
        parts.append(_table(head[:1] + head[first:second], [row[:1] + row[first:second] for row in rows.values()],
                            kind="scores"))  # fmt: skip
    if second < len(head):
        turned = [[head[second + j]] + [_stacked(row[second + j]) for row in rows.values()]
                  for j in range(len(head) - second)]  # fmt: skip
        parts.append('<p class="note">IoU per class (%), a row per class:</p>')
        parts.append(_table(["class", *(escape(loss) for loss in rows)], turned, kind="classes"))
    notes = []
    if summary.get("ci") or summary.get("vs_baseline"):
        notes.append(table_note(summary))
    notes += [f"Note: {note}" for note in summary.get("notes", [])]
    parts += [f'<p class="note">{escape(note)}</p>' for note in notes]
    return "\n".join(parts)


def _figure(number: int, figure: Figure, how: str) -> str:
    files = ", ".join(f"<code>figures/{escape(path.name)}</code>" for path in figure.files.values())
    return (
        f'<p class="how">{escape(how)}</p><figure><img src="{data_uri(figure.png)}" alt="{escape(figure.title)}">'
        f"<figcaption><b>Figure {number}. {escape(figure.title)}.</b> {escape(figure.caption)}"
        f"{' Files: ' + files + '.' if files else ''}</figcaption></figure>"
    )


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _disagreement(part: Disagreement, number: int) -> tuple[str, int]:
    if part.reason is not None:
        return _missing(part.reason), number
    a, b = escape(str(part.loss_a)), escape(str(part.loss_b))
    head = ["rank", "image", f"IoU {a}", f"IoU {b}", f"Δ = {a} − {b}"]
    rows = [[str(i + 1), escape(str(p.get("image", p.get("index")))), f"{100 * p['iou_a']:.1f}",
             f"{100 * p['iou_b']:.1f}", f"{100 * p['delta']:+.1f}"] for i, p in enumerate(part.picks)]  # fmt: skip
    out = [f'<p class="how">{escape(HOW["disagree"])}</p>', _table(head, rows, names=2)]
    out.append(
        '<p class="note">Per-image IoU (%): the mean over the classes in the image\'s ground truth or '
        "prediction of TP / (TP + FP + FN), mean over each loss's seeds; Δ in points; ranked by |Δ|.</p>"
    )
    if part.images_reason is not None:
        out.append(_missing(f"No panels: {part.images_reason}"))
    if part.legend and any(p.get("png_bytes") for p in part.picks):
        swatches = "".join(
            f'<span class="swatch"><i style="background: rgb({int(r)}, {int(g)}, {int(b)})"></i>{escape(name)}</span>'
            for name, (r, g, b) in part.legend
        )
        out.append(f'<p class="legend">Colours: {swatches}<span class="swatch"><i style="background: #000"></i>'
                   "ignored</span></p>")  # fmt: skip
    for i, pick in enumerate(part.picks):
        if pick.get("png_bytes") is None:
            continue
        number += 1
        name = escape(str(pick.get("image", pick.get("index"))))
        drawn = ""
        if "seed_a" in pick and "seed_b" in pick:
            drawn = (f" Predictions of {a} seed {escape(str(pick['seed_a']))} and {b} seed "
                     f"{escape(str(pick['seed_b']))} (each from its best checkpoint)")  # fmt: skip
            if "iou_run_a" in pick and "iou_run_b" in pick:
                ious = f"{100 * pick['iou_run_a']:.1f} and {100 * pick['iou_run_b']:.1f} %"
                drawn += f", whose IoUs on this image are {ious}"
            drawn += "."
        out.append(
            f'<figure><img src="{data_uri(pick["png_bytes"])}" alt="image {name}: {a} vs {b}"><figcaption><b>Figure '
            f"{number}. Rank {i + 1}: {name}.</b> Image | ground truth | {a} | {b}.{drawn} Mean over seeds: {a} "
            f"{100 * pick['iou_a']:.1f} %, {b} {100 * pick['iou_b']:.1f} % (Δ {100 * pick['delta']:+.1f}).</figcaption>"
            "</figure>"
        )
    return "\n".join(out), number


def _provenance(found: Provenance) -> str:
    out = [f'<p class="how">{escape(HOW["provenance"])}</p>']
    if found.sweeps:
        out.append("<p>The sweeps, as Hydra recorded them (<code>multirun.yaml</code>; run from the project root):</p>")
        for folder, command, count in found.sweeps:
            out.append(f"<p class=note><code>{escape(folder)}</code> — {count} of these runs:</p>"
                       f"<pre>{escape(command)}</pre>")  # fmt: skip
    else:
        out.append(_missing("No sweep command: no multirun.yaml next to these runs (a runs.json folder, or runs "
                            "trained one by one); the per-run commands are below where stored."))  # fmt: skip
    hashes = ", ".join(f"<code>{escape(h[:HASH_CHARS])}</code> ({n} runs)" for h, n in found.hashes)
    out.append(f"<p>Config hash{'es' if len(found.hashes) > 1 else ''}: {hashes}. sha256 of the resolved config "
               "without loss, seed and the keys that name places, speed or logging (the keys <code>make "
               "compare</code> ignores), as sorted JSON; the first "
               f"{HASH_CHARS} hex digits.</p>")  # fmt: skip
    rows = [[escape(r.path), escape(r.loss), str(r.seed), f"<code>{escape(r.config_hash[:HASH_CHARS])}</code>",
             escape(r.hydra_version or "—"), escape(r.finished),
             f"<code>{escape(r.command)}</code>" if r.command else "not stored"] for r in found.runs]  # fmt: skip
    table = _table(["run folder", "loss", "seed", "config hash", "Hydra", "finished", "command"], rows, names=2)
    out.append(f"<details><summary>Every run ({len(found.runs)}): folder, command, hash</summary>{table}</details>")
    shared = [[escape(key), f"<code>{escape(str(value))}</code>"] for key, value in found.shared.items()]
    out.append(f"<details><summary>The settings all these runs share ({len(shared)} keys)</summary>"
               f"{_table(['key', 'value'], shared, names=2)}</details>")  # fmt: skip
    return "\n".join(out)


def _environment(recorded: list[str], environments: tuple, machine: dict[str, str], versions: dict[str, str]) -> str:
    rows, missing = environments
    out = ["<h2>Environment</h2>"]
    out.append(f"<p>Recorded by the runs: {escape('; '.join(recorded))}.</p>")
    if rows:
        head = ["runs", "segloss commit", "packages", "CPU", "GPUs", "precision"]
        cells = [[str(count), *(escape(cell) for cell in row)] for row, count in rows]
        out.append("<h3>Environments the runs recorded (environment.json)</h3>")
        out.append(_table(head, cells, names=len(head), kind="environments"))
    if missing:
        scope = f"{missing} of the runs" if rows else "The runs"
        out.append(_missing(f"{scope} did not record package versions or the machine they ran on (they were trained "
                            "before trainings wrote environment.json). The tables below describe the process that "
                            "built this report, not necessarily the training's."))  # fmt: skip
    out.append("<h3>Machine of this report's process</h3>")
    out.append(_table(["", "value"], [[escape(k), escape(v)] for k, v in machine.items()], names=2))
    out.append("<h3>Package versions of this report's process</h3>")
    out.append(_table(["package", "version"], [[escape(k), escape(v)] for k, v in versions.items()], names=2))
    return "\n".join(out)


FIGURE_TITLES = {
    "forest": "Δ vs baseline",
    "heatmap": "IoU per class",
    "calibration": "Calibration",
    "curves": "Training curves",
}


def render(
    title: str, directory: str, date: str, counted: int, left_out: list[tuple[str, str]], sections: list[Section],
    environment: tuple[list[str], tuple, dict[str, str], dict[str, str]],
) -> str:  # fmt: skip
    """The whole page (module docstring)."""
    body = [f"<h1>{escape(title)}</h1>"]
    groups = f" · {len(sections)} groups of comparable runs" if len(sections) > 1 else ""
    body.append(f'<p class="meta">Sweep: <code>{escape(directory)}</code> · built {escape(date)} by '
                f"<code>python -m segloss.report</code> · {counted} runs counted, {len(left_out)} left out"
                f"{groups}.</p>")  # fmt: skip
    number = 0
    for index, section in enumerate(sections):
        first = ' class="first"' if index == 0 else ""
        if section.label:
            body.append(f"<h2{first}>Group: {escape(section.label)}</h2>")
        else:
            body.append(f"<h2{first}>Comparison</h2>")
        body.append(f'<p class="meta">{escape(section.runs_text)}; baseline '
                    f"<code>{escape(str(section.summary['baseline']))}</code>.</p>")  # fmt: skip
        body.append("<h3>Table</h3>")
        body.append(f'<p class="how">{escape(HOW["table"])}</p>')
        body.append(comparison_tables(section.summary))
        for key, heading in FIGURE_TITLES.items():
            body.append(f"<h3>{escape(heading)}</h3>")
            found = section.figures.get(key)
            if isinstance(found, Figure):
                number += 1
                body.append(_figure(number, found, HOW[key]))
            else:
                body.append(_missing(str(found or "not drawn")))
        part = section.disagreement
        pair = f": {part.loss_a} vs {part.loss_b}" if part.loss_a and part.loss_b else ""
        body.append(f"<h3>Where the losses disagree{escape(pair)}</h3>")
        html, number = _disagreement(part, number)
        body.append(html)
        body.append("<h3>Provenance</h3>")
        body.append(_provenance(section.provenance))
        body += [f'<p class="note">{escape(note)}</p>' for note in section.notes]
    if left_out:
        rows = [[escape(path), f'<span style="white-space:normal">{escape(why)}</span>'] for path, why in left_out]
        body.append(f"<h2>Runs left out ({len(left_out)})</h2>" + _table(["run folder", "why"], rows, names=2))
    body.append(_environment(*environment))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
