"""segloss: a Lightning + Hydra research template for semantic segmentation whose subject is the loss."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segloss")  # pyproject.toml's version, from the installed distribution's metadata
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "unknown"
