"""argparse pieces shared by the commands that are not Hydra apps (``make compare``, ``make report``)."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """A mistake on the command line is one line naming it, ``<prog>: error: … (see --help)``, and exit status 2."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def significance_level(text: str) -> float:
    """``--alpha``: a family-wise error rate in (0, 0.5)."""
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"{text} is not a significance level in (0, 0.5)")
    return value
