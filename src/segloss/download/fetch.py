"""Fetch one file over HTTP(S) with ``urllib``: resumable, checked for disk space, verified before use.

The bytes go to ``<target>.part``. An interrupted download keeps its ``.part`` and the next call asks for
the rest (``Range: bytes=N-``): a 206 answer is appended only when its ``Content-Range`` starts where the
part ends (anything else starts over), a 200 answer (a server without ranges) restarts from zero, a 416
answer means the part is already whole or the file changed on the server. A connection cut mid-transfer
is retried (``RETRIES`` times, resuming). Redirects are followed only within https (or from http up to
https): a redirect to another scheme (``ftp://``, ``file://``) or down to http is refused. Only a file
whose size and checksum match the config is renamed to ``<target>``; a mismatch moves it to
``<target>.bad`` (kept for inspection, never used) and raises. A file that is already at ``<target>`` (an
earlier run, or a manual download) is verified and reused without any network access.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from segloss.errors import DownloadError

CHUNK = 1 << 20
TIMEOUT_S = 60
RETRIES = 3  # attempts after a connection cut mid-transfer, each resuming the part
RETRY_DELAY_S = 1.0  # × 2, 4, 8 s between them
USER_AGENT = "segloss-download/1"
# Messages are not wrapped: URLs, checksums and the next command stay on one line, ready to copy.
console = Console(soft_wrap=True)


class Interrupted(DownloadError):
    """The transfer stopped part-way; the bytes received are kept in the ``.part`` file."""


class SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https, or to http from http: never from https down to http, never to
    another scheme (``ftp://``, ``file://``, …), whose bytes would bypass TLS or reach local files."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if new != "https" and not (old == new == "http"):
            raise DownloadError(
                f"{req.full_url} redirected to {newurl} ({old} → {new or 'no scheme'}): refused, only redirects to "
                "https (or http → http) are followed. Check the URL, or fetch the file by hand"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def default_opener(*handlers):
    """A urllib opener with :class:`SafeRedirect` (and ``handlers``, e.g. a cookie processor)."""
    return urllib.request.build_opener(SafeRedirect(), *handlers)


@dataclass(frozen=True)
class Remote:
    """A file to fetch: where from, its name on disk and what it must be (``None``: not published)."""

    url: str
    file: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at ``path`` (``hashlib.file_digest``, chunked reads)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def verify(path: Path, remote: Remote, mirror_hint: str, md5_key: str = "download.md5") -> str:
    """Check ``path`` against the size and checksum of ``remote``; return its sha256. A mismatch moves the
    file to ``<name>.bad`` and raises :class:`DownloadError`."""
    problem, sha256 = None, file_digest(path, "sha256")
    actual = path.stat().st_size
    if remote.size is not None and actual != remote.size:
        problem = f"its size is {actual:,} bytes, the config says {remote.size:,}"
    elif remote.sha256 and sha256 != remote.sha256.lower():
        problem = f"its sha256 is {sha256}, the config says {remote.sha256}"
    elif remote.md5 and (md5 := file_digest(path, "md5")) != remote.md5.lower():
        problem = f"its md5 is {md5}, the config says {remote.md5}"
    if problem:
        bad = path.with_name(remote.file + ".bad")
        os.replace(path, bad)
        raise DownloadError(
            f"{remote.file} from {remote.url} failed verification: {problem}. Nothing was unpacked; the file "
            f"was moved aside to {bad}. Re-run the same command to download it again, or fetch it from a "
            f"mirror ({mirror_hint}); if the publisher changed the file, set the new checksum with "
            f"{md5_key}=… after checking it"
        )
    return sha256


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DownloadError` when ``folder``'s file system has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space for {what}: {needed:,} bytes needed in {folder}, {free:,} free. Free "
            f"{needed - free:,} bytes there, or point DATA_ROOT (paths.data_dir) at a larger disk, and re-run"
        )


def fetch(
    remote: Remote, folder: Path, opener=None, mirror_hint: str = "download.base_url=…", md5_key: str = "download.md5"
) -> tuple[Path, str]:
    """Download ``remote`` into ``folder`` (resuming a ``.part``) and verify it; returns (path, sha256). The
    hints name the config keys of a mirror and of a checksum (``download.requires_…`` for a required set)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.file
    if target.is_file():
        return target, verify(target, remote, mirror_hint, md5_key)
    part = folder / (remote.file + ".part")
    opener = opener or default_opener()
    restarts, cuts = 0, 0
    while True:
        try:
            if _download(remote, part, opener, mirror_hint):
                break
            restarts += 1  # a 416 or a range answer that does not continue the part: start over, once
            if restarts > 1:
                raise DownloadError(
                    f"{remote.url} keeps answering ranges that do not continue {part}; fetch it by hand"
                )
        except Interrupted as cut:
            cuts += 1
            if cuts > RETRIES:
                raise cut
            console.print(f"[yellow]{cut}; retrying ({cuts} of {RETRIES})[/yellow]")
            time.sleep(min(2.0**cuts, 30) * RETRY_DELAY_S)
    os.replace(part, target)
    return target, verify(target, remote, mirror_hint, md5_key)


def _download(remote: Remote, part: Path, opener, mirror_hint: str) -> bool:
    """One request for the rest of ``part``; True when the part is complete (False: start over)."""
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0
    if remote.size is not None:
        check_free_space(part.parent, remote.size - have, remote.file)
    request = urllib.request.Request(remote.url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            if remote.size is None or have == remote.size:
                return True  # the server has no more bytes: the part is whole (verified next)
            part.unlink()
            return False
        raise _server_error(remote, part.parent, f"HTTP {err.code} {err.reason}", mirror_hint) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _server_error(remote, part.parent, f"{type(err).__name__}: {reason}", mirror_hint) from err
    with response:
        if (response.headers.get("Content-Type") or "").startswith("text/html") and remote.file.endswith(
            (".zip", ".tar", ".tgz", ".gz", ".safetensors")
        ):
            raise DownloadError(
                f"{remote.url} answered with a web page instead of {remote.file} (a login page, an error page or "
                f"a moved file). Check the URL and any credentials, or use a mirror ({mirror_hint})"
            )
        resumed = have and response.status == 206
        if resumed and _range_start(response.headers.get("Content-Range")) != have:
            console.print(f"[yellow]{remote.url}: the range answer ({response.headers.get('Content-Range')}) does "
                          f"not continue the {have:,} bytes in {part.name}; starting over[/yellow]")  # fmt: skip
            part.unlink()
            return False
        if not resumed:
            have = 0  # 200: the server sends the whole file
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else remote.size
        if remote.size is None and length is not None:
            check_free_space(part.parent, int(length), remote.file)
        _stream(response, part, "ab" if resumed else "wb", have, expected, remote)
    return True


def _range_start(header: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes a-b/total`` header (None when absent or malformed)."""
    found = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", header or "")
    return int(found.group(1)) if found else None


def _stream(response, part: Path, mode: str, have: int, total: int | None, remote: Remote) -> None:
    """Copy ``response`` into ``part`` under a rich progress bar; failures keep the bytes already written."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    written = have
    try:
        with open(part, mode) as out, Progress(*columns, transient=True) as progress:
            task = progress.add_task(remote.file, total=total, completed=have)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
                progress.update(task, completed=written)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DownloadError(
                f"the disk filled up while writing {part} ({written:,} bytes written"
                + (f", {total - written:,} still needed" if total else "")
                + "). Free space there or move DATA_ROOT to a larger disk, then re-run: the download resumes"
            ) from err
        raise _cut(remote, part, written, err) from err
    except (TimeoutError, http.client.HTTPException) as err:
        raise _cut(remote, part, written, err) from err
    if total is not None and written < total:
        raise _cut(remote, part, written, f"the server closed the connection at {written:,} of {total:,} bytes")


def _cut(remote: Remote, part: Path, written: int, cause) -> DownloadError:
    return Interrupted(
        f"the download of {remote.url} was interrupted ({cause}); {written:,} bytes are kept in {part}. "
        "Re-run the same command: it resumes where it stopped"
    )


def _server_error(remote: Remote, folder: Path, status: str, mirror_hint: str) -> DownloadError:
    return DownloadError(
        f"could not download {remote.file} from {remote.url}: {status}. Check the network and re-run (a partial "
        f"download resumes), use a mirror ({mirror_hint}), or fetch the file by hand into {folder}/, where the "
        "same command verifies and unpacks it"
    )
