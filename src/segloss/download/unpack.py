"""Unpack verified archives so that a dataset folder is either absent or whole.

Archives (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``) are extracted into a temporary folder
``<parent>/.<dest>.partial-XXXX`` next to the destination, and the finished folder is renamed into place
with one ``os.replace`` (atomic on one file system). Members with absolute paths, ``..`` components or links
leaving the archive are refused (path traversal). The bytes to extract are bounded before anything is
written: the members' declared sizes must fit the free disk space and stay under ``MAX_RATIO`` times the
archive's size (a decompression bomb: a small ``.tgz`` that expands to fill the disk); tar and zip write
exactly the declared sizes (zip checks them with each member's CRC). A failure removes the temporary folder;
a temporary folder left by a killed run is removed by the next run (the name says it is ours).
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
# Largest expansion accepted: image datasets (PNG/JPEG/NIfTI.gz inside) expand ~1×; text-like members can
# reach 10–20×; 200× is past any dataset here and far below a bomb's (10⁴–10⁶×).
MAX_RATIO = 200


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


def _check_expansion(archive: Path, into: Path, total: int) -> None:
    """The declared bytes of ``archive``'s members must fit the disk and stay under :data:`MAX_RATIO`."""
    size = max(archive.stat().st_size, 1)
    if total > MAX_RATIO * size:
        raise DownloadError(
            f"{archive} would expand to {total:,} bytes, {total / size:,.0f}× its size (more than {MAX_RATIO}×: a "
            "decompression bomb, or not the archive the config describes); it was not unpacked. Delete it and "
            "download it from the official source"
        )
    check_free_space(into, total, f"unpacking {archive.name}")


def unpack(archive: Path, into: Path) -> None:
    """Extract ``archive`` into the folder ``into`` (a staging folder), refusing unsafe members and bounding
    the bytes written (module docstring); a corrupt archive is moved to ``<name>.bad`` (so the next run
    downloads it again) and raises."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for member in members:
                    _safe_name(member.filename, archive)
                _check_expansion(archive, into, sum(m.file_size for m in members))
                zf.extractall(into)  # every member's CRC and size are checked as it is read
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()  # reads every header (one pass through a .tgz), writes nothing
                for member in members:
                    _safe_name(member.name, archive)
                    if member.issym() or member.islnk():
                        _safe_name(str(PurePosixPath(member.name).parent / member.linkname), archive)
                _check_expansion(archive, into, sum(m.size for m in members if m.isfile()))
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
