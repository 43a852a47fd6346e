"""``python -m segloss.download …``: see :mod:`segloss.download.cli`."""

from segloss.download.cli import main

if __name__ == "__main__":
    main()
