"""``python -m segloss.report``: :func:`segloss.report.cli.main`."""

import sys

from segloss.report.cli import main

sys.exit(main())
