"""Report a sweep's loss comparison as one self-contained HTML page with its figures for a paper (make report).

``python -m segloss.report [DIR] [--baseline LOSS] [--pair A,B] [--images N] [--out FOLDER] [--formats …]``,
``make report DIR=<sweep>``: the report of a sweep (:mod:`segloss.report`) in ``OUT`` (default ``DIR/report``):
``report.html`` and ``figures/``. ``DIR`` defaults to the newest sweep under ``logs/train/multiruns``, as for
``make compare``; ``--baseline``, ``--alpha`` and ``--ignore`` mean what they mean there. A mistake (no finished
runs, an unknown loss, an output folder holding other files) is a one-line error naming the fix, exit status 2,
and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segloss.comparison import significance
from segloss.report.build import IMAGES, build_report
from segloss.report.figures import FORMATS
from segloss.utils.arguments import OneLineParser, significance_level


def _formats(text: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    wrong = [fmt for fmt in found if fmt not in FORMATS]
    if wrong or not found:
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {','.join(FORMATS)}, comma-separated")
    return found


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 50:
        raise argparse.ArgumentTypeError(f"{text} is not a number of images in 0…50")
    return value


def main(argv: list[str] | None = None) -> int:
    """Build the report; 0 when written (the console script ``segloss-report`` points here)."""
    from segloss.comparison.runs import latest_sweep
    from segloss.utils.config import PROJECT_ROOT, report_user_errors

    parser = OneLineParser(prog="segloss report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="sweep directory, or a make compare output with runs.json "
                        "(default: the newest under logs/train/multiruns)")  # fmt: skip
    parser.add_argument("--out", help="output folder (default: DIR/report), replaced whole")
    parser.add_argument("--baseline", help="the loss the others are tested against (default: the first)")
    parser.add_argument("--pair", metavar="A,B", help="the two losses whose disagreements are shown (default: the "
                        "best by mean mIoU and the baseline)")  # fmt: skip
    parser.add_argument("--images", type=_count, default=IMAGES, metavar="N",
                        help=f"validation images shown for the pair (default {IMAGES}; 0: none)")  # fmt: skip
    parser.add_argument("--formats", type=_formats, default=FORMATS, metavar="png,pdf,svg",
                        help="figure files written under OUT/figures (default all three)")  # fmt: skip
    parser.add_argument("--alpha", type=significance_level, default=significance.ALPHA,
                        help="family-wise error rate (default 0.05)")  # fmt: skip
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="a config key whose values do not split the runs into groups (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    with report_user_errors():
        directory = Path(args.dir) if args.dir else latest_sweep(Path(PROJECT_ROOT) / "logs" / "train" / "multiruns")
        page = build_report(directory, args.out, args.baseline, args.pair, args.images, args.formats,
                            tuple(args.ignore), args.alpha)  # fmt: skip
        print(f"written: {page} (figures in {page.parent / 'figures'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
