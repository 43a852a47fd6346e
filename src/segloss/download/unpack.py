"""Unpack verified archives so that a dataset folder is either absent or whole.

Archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``) are extracted into a temporary folder
``<parent>/.<dest>.partial-XXXX`` next to the destination, and the finished folder is renamed into place
with one ``os.replace`` (atomic on one file system). Members with absolute paths, ``..`` components or links
leaving the archive are refused (path traversal). A failure removes the temporary folder; a temporary
folder left by a killed run is removed by the next run (the name says it is ours).
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from segloss.download.fetch import check_free_space
from segloss.errors import DownloadError

PARTIAL = ".partial-"


def partial_prefix(dest: Path) -> str:
    return f".{dest.name}{PARTIAL}"


@contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A fresh temporary folder next to ``dest`` (stale ones of earlier runs removed), deleted on exit
    whatever happens; the caller renames its result into place before leaving."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(partial_prefix(dest) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=partial_prefix(dest), dir=dest.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _safe_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DownloadError(
            f"{archive} holds the member {name!r}, which would be written outside the dataset folder; it was not "
            "unpacked. Delete the archive and download it from the official source"
        )


def _corrupt(archive: Path, err: BaseException) -> DownloadError:
    bad = archive.with_name(archive.name + ".bad")
    archive.replace(bad)
    return DownloadError(
        f"{archive.name} is corrupt or truncated ({type(err).__name__}: {err}); nothing was placed in the dataset "
        f"folder and the archive was moved aside to {bad}. Re-run the same command to download it again"
    )


def unpack(archive: Path, into: Path) -> None:
    """Extract ``archive`` into the folder ``into`` (a staging folder), refusing unsafe members; a corrupt
    archive is moved to ``<name>.bad`` (so the next run downloads it again) and raises."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for member in members:
                    _safe_name(member.filename, archive)
                check_free_space(into, sum(m.file_size for m in members), f"unpacking {archive.name}")
                zf.extractall(into)  # every member's CRC is checked as it is read
        else:
            check_free_space(into, archive.stat().st_size, f"unpacking {archive.name}")
            with tarfile.open(archive) as tf:
                for member in tf:
                    _safe_name(member.name, archive)
                    if member.issym() or member.islnk():
                        _safe_name(str(PurePosixPath(member.name).parent / member.linkname), archive)
                tf.extractall(into, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise _corrupt(archive, err) from err


def place(source: Path, dest: Path) -> None:
    """Rename the finished folder ``source`` to ``dest`` (which must not exist)."""
    if not source.is_dir():
        raise DownloadError(
            f"the archive did not contain the expected folder {source.name}/; nothing was placed at {dest}. The "
            "download may be a different file than the config describes: check download.base_url"
        )
    source.replace(dest)
