"""Download, verify, unpack and prepare one dataset described by a ``configs/download/<name>.yaml`` spec.

Steps: the required dataset first (``requires``, e.g. VOC before SBD); skip when the destination is already
complete; fetch every archive into ``<data_dir>/.downloads/`` (an archive already there, also one put there
by hand, is verified and reused); unpack all of them into one staging folder next to the destination;
convert (``prepare``) where the loaders need it; write the completion marker; rename into place; run the
loader's own check. A destination that exists but is not a complete copy of this dataset is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segloss.download import login as site_login
from segloss.download.fetch import Remote, check_free_space, console, fetch
from segloss.download.prepare import PREPARE, layout_check
from segloss.download.unpack import place, staging, unpack
from segloss.errors import DownloadError, SeglossError
from segloss.utils.config import CONFIG_DIR

MARKER = ".segloss-download.json"


def remotes(spec: DictConfig) -> list[Remote]:
    """The archives of ``spec`` with absolute URLs (relative ones are joined to ``spec.base_url``); a
    ``download.md5=…`` given on the command line pins the checksum of a single-archive spec (and drops the
    config's byte size, which belongs to the published file)."""
    archives = spec.archives
    out = []
    for archive in archives:
        url = str(archive.url)
        if "://" not in url:
            url = f"{str(spec.base_url).rstrip('/')}/{url.lstrip('/')}"
        pinned = len(archives) == 1 and bool(spec.get("md5"))
        md5 = spec.md5 if pinned else archive.get("md5")
        size = None if pinned else archive.get("size")
        out.append(Remote(url, str(archive.file), size, md5, archive.get("sha256")))
    return out


def load_spec(name: str, data_dir: Path, base_url: str | None = None, md5: str | None = None) -> DictConfig:
    """``configs/download/<name>.yaml`` on its own (for ``requires``), with optional mirror and md5 overrides."""
    spec = OmegaConf.load(CONFIG_DIR / "download" / f"{name}.yaml")
    if base_url:
        spec.base_url = base_url
    if md5:
        spec.md5 = md5
    root = OmegaConf.create({"download": spec, "paths": {"data_dir": str(data_dir)}})
    return root.download


def _state(spec: DictConfig, data_dir: Path) -> str:
    """``absent``, ``complete`` (ours, or a copy that the loader accepts) or ``foreign``."""
    dest = data_dir / spec.dest
    if not dest.exists():
        return "absent"
    marker = dest / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("dataset") == spec.name:
        return "complete"
    try:
        layout_check(spec.check, data_dir)
        return "complete"
    except SeglossError:
        return "foreign"


def download_dataset(spec: DictConfig, data_dir: Path) -> list[str]:
    """Make ``data_dir/spec.dest`` a whole, checked copy of the dataset; returns the check's lines."""
    if spec.get("requires"):
        required = load_spec(spec.requires, data_dir, spec.get("requires_base_url"), spec.get("requires_md5"))
        required.key_prefix = "requires_"  # its hints name download.requires_base_url / requires_md5
        download_dataset(required, data_dir)
    dest = data_dir / spec.dest
    state = _state(spec, data_dir)
    if state == "foreign":
        raise DownloadError(
            f"{dest} already exists and is not a complete copy of {spec.name} (no download marker, and the loader "
            "refuses it); nothing was changed. Move it away (or finish it by hand) and re-run, or set "
            "DATA_ROOT / paths.data_dir to another folder"
        )
    if state == "complete":
        console.print(f"[green]{dest} is already complete[/green]; nothing to download for {spec.name}")
    else:
        _fetch_and_place(spec, data_dir, dest)
    lines = layout_check(spec.check, data_dir)
    console.print(f"[green]{spec.name}[/green] at {data_dir / spec.check.root} passes the loader's check:")
    for line in lines:
        console.print(f"  {line}")
    return lines


def _with_published_md5(spec: DictConfig, items: list[Remote], opener) -> list[Remote]:
    """The archives with the md5 the site publishes after login (``md5_url``), where the config pins none."""
    out = []
    for remote, archive in zip(items, spec.archives, strict=True):
        if archive.get("md5_url") and not (remote.md5 or remote.sha256):
            url = f"{str(spec.base_url).rstrip('/')}/{archive.md5_url}"
            published = site_login.published_md5(opener, url, spec.login.site)
            remote = Remote(remote.url, remote.file, remote.size, published, None)
        out.append(remote)
    return out


def _check_room(items: list[Remote], downloads: Path) -> None:
    """Before any byte is fetched: room for what is still to download *and* for unpacking it (at least the
    archives' size again), where the sizes are known — not an hour into a download."""
    known = [r for r in items if r.size is not None]
    if not known:
        return
    have = {r.file: (downloads / r.file).stat().st_size for r in known if (downloads / r.file).is_file()}
    parts = {
        r.file: (downloads / f"{r.file}.part").stat().st_size for r in known if (downloads / f"{r.file}.part").is_file()
    }
    to_fetch = sum(r.size - parts.get(r.file, 0) for r in known if r.file not in have)
    downloads.mkdir(parents=True, exist_ok=True)
    check_free_space(downloads, to_fetch + sum(r.size for r in known), "downloading and unpacking " +
                     ", ".join(r.file for r in known))  # fmt: skip


def _fetch_and_place(spec: DictConfig, data_dir: Path, dest: Path) -> None:
    downloads = data_dir / ".downloads"
    items = remotes(spec)
    opener = None
    if spec.get("login"):
        missing = [r.file for r in items if not (downloads / r.file).is_file()]
        if missing:
            creds = site_login.credentials(spec.login)
            if creds is None:
                raise DownloadError(site_login.manual_instructions(spec.login, missing, downloads))
            opener = site_login.logged_in_opener(spec, *creds)
            items = _with_published_md5(spec, items, opener)
    _check_room(items, downloads)
    prefix = spec.get("key_prefix") or ""
    hint = f"download.{prefix}base_url=<mirror>, now {spec.base_url}"
    archives = {}
    for remote in items:
        console.print(f"{spec.name}: {remote.file} from {remote.url}")
        _, sha256 = fetch(remote, downloads, opener, hint, f"download.{prefix}md5")
        archives[remote.file] = sha256
        if not (remote.md5 or remote.sha256):
            console.print(
                f"[yellow]{remote.file}: no published checksum in the config; its sha256 is {sha256}[/yellow]"
            )
    with staging(dest) as stage:
        unpacked = stage / "unpacked"
        unpacked.mkdir()
        for remote in items:
            console.print(f"unpacking {remote.file}")
            unpack(downloads / remote.file, unpacked)
        if spec.get("prepare"):
            result = stage / "prepared"
            count = PREPARE[spec.prepare](unpacked, result)
            console.print(f"{spec.prepare}: {count} files written")
        else:
            result = unpacked / spec.member if spec.member else unpacked
        if result.is_dir():
            (result / MARKER).write_text(json.dumps({"dataset": spec.name, "archives": archives}, indent=1))
        place(result, dest)
    console.print(f"[green]{dest}[/green] is in place")
    if not spec.get("keep_archives", True):
        for remote in items:
            os.remove(downloads / remote.file)
