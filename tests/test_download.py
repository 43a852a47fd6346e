"""make download, the mechanics: resumable fetch, verification, disk space, server errors, safe unpacking."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from segloss.download import fetch as fetch_module
from segloss.download.fetch import Remote, fetch
from segloss.download.unpack import staging, unpack
from segloss.errors import DownloadError
from tests.http_server import FileServer


@pytest.fixture
def blob(tmp_path) -> Path:
    path = tmp_path / "served" / "data.tar"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(fetch_module, "RETRY_DELAY_S", 0.0)


def test_a_cut_connection_is_retried_and_resumed(server, blob, tmp_path):
    url = server.add("/data.tar", blob)
    server.cut_once["/data.tar"] = 100_000
    remote = Remote(url, "data.tar", blob.stat().st_size, md5(blob))
    path, sha256 = fetch(remote, tmp_path / "dl")  # one call: the cut is retried from byte 100 000
    assert path.read_bytes() == blob.read_bytes() and sha256 == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert server.gets("/data.tar") == [None, "bytes=100000-"]


def test_resume_after_cut_connection(server, blob, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "RETRIES", 0)  # as when every retry is cut too
    url = server.add("/data.tar", blob)
    server.cut_once["/data.tar"] = 100_000
    remote = Remote(url, "data.tar", blob.stat().st_size, md5(blob))
    folder = tmp_path / "dl"
    with pytest.raises(DownloadError, match="resumes where it stopped") as err:
        fetch(remote, folder)
    assert "100,000 bytes are kept" in str(err.value)
    assert (folder / "data.tar.part").stat().st_size == 100_000
    assert not (folder / "data.tar").exists()
    path, sha256 = fetch(remote, folder)
    assert path.read_bytes() == blob.read_bytes()
    assert sha256 == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert server.gets("/data.tar") == [None, "bytes=100000-"]
    assert not (folder / "data.tar.part").exists()
    fetch(remote, folder)  # already there: verified, no request
    assert len(server.gets("/data.tar")) == 2


def test_server_without_ranges_restarts_from_zero(server, blob, tmp_path):
    url = server.add("/data.tar", blob)
    server.cut_once["/data.tar"] = 50_000
    server.ignore_range = True
    remote = Remote(url, "data.tar", None, md5(blob))
    path, _ = fetch(remote, tmp_path / "dl")  # the retry gets 200 instead of 206: rewritten, not appended
    assert path.read_bytes() == blob.read_bytes()
    assert server.gets("/data.tar") == [None, "bytes=50000-"]


def test_a_range_answer_that_does_not_continue_the_part_starts_over(server, blob, tmp_path):
    """A server restarting from byte 0 while answering 206 used to be appended: a longer file, accepted
    without a pinned checksum (and trusted as the weights' manifest value)."""
    url = server.add("/data.tar", blob)
    server.range_from_zero = True  # 206 with Content-Range: bytes 0-…
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "data.tar.part").write_bytes(blob.read_bytes()[:1000])
    path, _ = fetch(Remote(url, "data.tar", None, None), tmp_path / "dl")
    assert path.read_bytes() == blob.read_bytes()
    assert server.gets("/data.tar") == ["bytes=1000-", None]


def test_redirects_to_another_scheme_or_down_to_http_are_refused(server, blob, tmp_path):
    server.add("/data.tar", blob)
    server.redirects["/to-ftp"] = "ftp://127.0.0.1/data.tar"
    server.redirects["/to-file"] = "file:///etc/passwd"
    server.redirects["/same"] = f"{server.url}/data.tar"
    with pytest.raises(DownloadError, match=r"redirected to ftp://.* refused, only redirects to https"):
        fetch(Remote(f"{server.url}/to-ftp", "data.tar", None, None), tmp_path / "ftp")
    with pytest.raises(DownloadError, match=r"file:///etc/passwd' is not allowed"):  # urllib's own refusal
        fetch(Remote(f"{server.url}/to-file", "data.tar", None, None), tmp_path / "file")
    assert not (tmp_path / "ftp" / "data.tar").exists() and not (tmp_path / "file" / "data.tar").exists()
    found, _ = fetch(Remote(f"{server.url}/same", "data.tar", None, None), tmp_path / "same")  # http → http
    assert found.read_bytes() == blob.read_bytes()
    request = urllib.request.Request("https://example.org/data.tar")
    with pytest.raises(DownloadError, match=r"\(https → http\)"):
        fetch_module.SafeRedirect().redirect_request(request, None, 302, "Found", {}, "http://example.org/x")


def test_whole_part_answered_416_is_used(server, blob, tmp_path):
    url = server.add("/data.tar", blob)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "data.tar.part").write_bytes(blob.read_bytes())
    path, _ = fetch(Remote(url, "data.tar", blob.stat().st_size, md5(blob)), tmp_path / "dl")
    assert path.read_bytes() == blob.read_bytes()
    assert server.gets("/data.tar") == [f"bytes={blob.stat().st_size}-"]


def test_wrong_checksum_is_refused_and_moved_aside(server, blob, tmp_path):
    url = server.add("/data.tar", blob)
    with pytest.raises(DownloadError, match="failed verification: its md5 is") as err:
        fetch(Remote(url, "data.tar", None, "0" * 32), tmp_path / "dl")
    assert "Nothing was unpacked" in str(err.value) and "download.base_url" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["data.tar.bad"]


def test_wrong_size_is_refused(server, blob, tmp_path):
    url = server.add("/data.tar", blob)
    with pytest.raises(DownloadError, match="size is 300,000 bytes, the config says 299,999"):
        fetch(Remote(url, "data.tar", 299_999, None), tmp_path / "dl")


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_names_url_status_and_fix(server, blob, tmp_path, status):
    server.add("/data.tar", blob)
    server.status["/data.tar"] = status
    url = f"{server.url}/data.tar"
    with pytest.raises(DownloadError) as err:
        fetch(Remote(url, "data.tar", None, md5(blob)), tmp_path / "dl", mirror_hint="download.base_url=<mirror>")
    message = str(err.value)
    assert url in message and f"HTTP {status}" in message and "download.base_url=<mirror>" in message
    assert not any((tmp_path / "dl").iterdir())


def test_connection_refused(tmp_path):
    server = FileServer()
    url = f"{server.url}/data.tar"
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match=r"could not download data\.tar from http://127\.0\.0\.1"):
        fetch(Remote(url, "data.tar", 10, None), tmp_path / "dl")


def test_full_disk_stops_before_downloading(server, blob, tmp_path, monkeypatch):
    url = server.add("/data.tar", blob)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(DownloadError, match=r"300,000 bytes needed in .*, 1,000 free") as err:
        fetch(Remote(url, "data.tar", blob.stat().st_size, md5(blob)), tmp_path / "dl")
    assert "DATA_ROOT" in str(err.value)
    assert server.gets("/data.tar") == [] and not any((tmp_path / "dl").iterdir())


def test_disk_filling_up_mid_download_keeps_the_part_and_the_rerun_resumes(server, blob, tmp_path, monkeypatch):
    """ENOSPC while writing (the size was unknown, so no check could run before): one message naming the
    problem and the fix, the bytes written so far kept, and the next run asks only for the rest."""
    import errno

    url = server.add("/data.tar", blob)
    real_open = open

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 120_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        return io.BufferedWriter(FullDisk(path, mode.replace("b", ""))) if "b" in mode else real_open(path, mode)

    monkeypatch.setattr(fetch_module, "CHUNK", 40_000)
    monkeypatch.setattr(fetch_module, "open", open_on_full_disk, raising=False)
    remote = Remote(url, "data.tar", None, md5(blob))
    with pytest.raises(DownloadError, match="the disk filled up while writing") as err:
        fetch(remote, tmp_path / "dl")
    assert "then re-run: the download resumes" in str(err.value)
    kept = (tmp_path / "dl" / "data.tar.part").stat().st_size
    assert 0 < kept <= 120_000 and not (tmp_path / "dl" / "data.tar").exists()
    monkeypatch.undo()
    path, _ = fetch(remote, tmp_path / "dl")
    assert path.read_bytes() == blob.read_bytes()
    assert server.gets("/data.tar") == [None, f"bytes={kept}-"]


def test_web_page_instead_of_archive_is_refused(server, tmp_path):
    server.add("/data.zip", tmp_path / "never-read", protected=True)  # answers the login page
    with pytest.raises(DownloadError, match="answered with a web page"):
        fetch(Remote(f"{server.url}/data.zip", "data.zip"), tmp_path / "dl")
    assert not any((tmp_path / "dl").iterdir())


def _tar_with(path: Path, name: str) -> Path:
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo(name)
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    return path


def test_unpack_refuses_path_traversal(tmp_path):
    archive = _tar_with(tmp_path / "evil.tar", "../escaped.txt")
    dest = tmp_path / "data" / "Kvasir-SEG"
    with pytest.raises(DownloadError, match="outside the dataset folder"), staging(dest) as stage:
        unpack(archive, stage)
    assert not (tmp_path / "data" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert list((tmp_path / "data").iterdir()) == []  # the staging folder is gone too


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_truncated_archive_is_refused_and_moved_aside(tmp_path, kind):
    good = tmp_path / f"good.{kind}"
    if kind == "tgz":
        with tarfile.open(good, "w:gz") as tf:
            for i in range(20):
                info = tarfile.TarInfo(f"Kvasir-SEG/images/{i}.bin")
                payload = np.random.default_rng(i).integers(0, 256, 4000, dtype=np.uint8).tobytes()
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    else:
        import zipfile

        with zipfile.ZipFile(good, "w") as zf:
            zf.writestr("Kvasir-SEG/images/0.bin", b"x" * 50_000)
    archive = tmp_path / f"cut.{kind}"
    data = good.read_bytes()
    archive.write_bytes(data[: len(data) // 2] if kind == "tgz" else data.replace(b"x" * 100, b"y" * 100, 1))
    dest = tmp_path / "data" / "Kvasir-SEG"
    with pytest.raises(DownloadError, match="corrupt or truncated") as err, staging(dest) as stage:
        unpack(archive, stage)
    assert "Re-run the same command" in str(err.value)
    assert not archive.exists() and (tmp_path / f"cut.{kind}.bad").is_file()
    assert list((tmp_path / "data").iterdir()) == []


def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path):
    """A 10 MB run of zeros compresses ~1000×: the old bound (the compressed size) let it fill the disk."""
    archive = tmp_path / "bomb.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("data/zeros.bin")
        info.size = 10_000_000
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size * 200 < 10_000_000
    with staging(tmp_path / "dest") as into:
        with pytest.raises(DownloadError, match=r"would expand to 10,000,000 bytes, .*× its size .* bomb"):
            unpack(archive, into)
        assert list(into.iterdir()) == []
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(10_000_000))
    with staging(tmp_path / "dest") as into:
        with pytest.raises(DownloadError, match="decompression bomb"):
            unpack(tmp_path / "bomb.zip", into)
        assert list(into.iterdir()) == []
