"""make download end to end, per dataset: tiny archives in each publisher's format served on 127.0.0.1 are
fetched through the real config and entry point, verified, unpacked, prepared, and loaded by the project's
own dataset classes; plus the refusals (wrong checksum, foreign destination, missing credentials)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from segloss.data.cityscapes import CityscapesDataset
from segloss.data.folders import ImageMaskFolderDataset
from segloss.data.medical import MSDSliceDataset
from segloss.data.voc import VOCDataset
from segloss.download.cli import run
from segloss.errors import DownloadError
from tests.conftest import compose_config, run_cli
from tests.http_server import FileServer
from tests.trees import archives


def download(tmp_path: Path, overrides: list[str]):
    """``python -m segloss.download overrides…`` in this process, data under ``tmp_path/data``."""
    cfg = compose_config("download", [f"paths.data_dir={tmp_path / 'data'}", *overrides], tmp_path / "run")
    return run(cfg)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(data: Path) -> list[str]:
    """Staging folders or part files anywhere under ``data`` (there must be none after a run)."""
    return [str(p) for p in data.rglob("*") if ".partial-" in p.name or p.name.endswith(".part")]


def test_voc_aug_fetches_voc_then_converts_sbd(server, tmp_path, capsys):
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063"], "trainval": []}
    sbd_only = ["2008_000002", "2008_000003"]
    served = tmp_path / "served"
    served.mkdir()
    voc = archives.voc_tar(served / "VOCtrainval_11-May-2012.tar", tmp_path / "w1", ids, sbd_only)
    labels = archives.sbd_tgz(served / "benchmark.tgz", tmp_path / "w2", ["2007_000032", *sbd_only])
    server.add("/voc/VOCtrainval_11-May-2012.tar", served / "VOCtrainval_11-May-2012.tar")
    server.add("/sbd/benchmark.tgz", served / "benchmark.tgz")
    download(tmp_path, [
        "download=voc_aug", f"download.base_url={server.url}/sbd", f"download.requires_base_url={server.url}/voc",
        f"download.md5={md5(served / 'benchmark.tgz')}",
        f"download.requires_md5={md5(served / 'VOCtrainval_11-May-2012.tar')}",
    ])  # fmt: skip
    out = capsys.readouterr().out
    data = tmp_path / "data"
    aug = data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == ["2007_000032", *sbd_only]
    dataset = VOCDataset(data / "VOCdevkit", split="trainaug")
    assert [name for name, _, _ in dataset.samples] == ["2007_000032", "2007_000039", *sbd_only]
    item = dataset[dataset.samples.index(next(s for s in dataset.samples if s[0] == "2008_000003"))]
    assert np.array_equal(item["mask"].numpy(), labels["2008_000003"])
    # VOC train ids keep their VOC mask (with 255 borders), as the loader documents
    assert np.array_equal(dataset[0]["mask"].numpy(), voc["SegmentationClass"]["2007_000032"])
    assert VOCDataset(data / "VOCdevkit", split="val")[0]["mask"].shape == (12, 16)
    assert "next: make train EXP=ce_voc" in out and "trainaug: 4 samples" in out
    assert leftovers(data) == [] and not (data / "benchmark_RELEASE").exists()
    assert sorted(p.name for p in (data / ".downloads").iterdir()) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]


def test_voc_aug_hints_name_the_keys_of_the_required_voc_download(server, tmp_path):
    """The VOC tar fetched for voc_aug is configured with download.requires_base_url / requires_md5: its
    errors used to name download.base_url / download.md5, which set SBD's."""
    served = tmp_path / "served"
    served.mkdir()
    ids = {"train": ["2007_000032"], "val": ["2007_000063"], "trainval": []}
    archives.voc_tar(served / "VOCtrainval_11-May-2012.tar", tmp_path / "w1", ids, ["2008_000002"])
    server.add("/voc/VOCtrainval_11-May-2012.tar", served / "VOCtrainval_11-May-2012.tar")
    with pytest.raises(DownloadError) as err:
        download(tmp_path, ["download=voc_aug", f"download.requires_base_url={server.url}/voc",
                            "download.requires_md5=00000000000000000000000000000000"])  # fmt: skip
    message = str(err.value)
    assert "download.requires_base_url=<mirror>" in message and "download.requires_md5=…" in message
    assert "download.md5=…" not in message and "download.base_url=<mirror>" not in message


def test_msd_refuses_wrong_checksum_then_unpacks_with_the_right_one(server, tmp_path, capsys):
    served = tmp_path / "Task09_Spleen.tar"
    written = archives.msd_tar(served, tmp_path / "w", cases=3)
    server.add("/msd/Task09_Spleen.tar", served)
    data, base = tmp_path / "data", f"download.base_url={server.url}/msd"
    # the config holds the md5 of the real Task09_Spleen.tar (MONAI's): the tiny tar is refused
    with pytest.raises(DownloadError, match=r"its md5 is .*the config says 410d4a301da4e5b2f6f86ec3ddba524e"):
        download(tmp_path, ["download=msd", base, f"paths.cache_dir={tmp_path / 'cache'}"])
    assert sorted(p.name for p in data.iterdir()) == [".downloads"]
    assert [p.name for p in (data / ".downloads").iterdir()] == ["Task09_Spleen.tar.bad"]
    download(tmp_path, ["download=msd", base, f"download.md5={md5(served)}", f"paths.cache_dir={tmp_path / 'cache'}"])
    dataset = MSDSliceDataset(data / "Task09_Spleen", split="all", cache_dir=tmp_path / "cache")
    assert dataset.cases == sorted(written) and dataset.CLASS_NAMES == ["background", "spleen"]
    labels = sum(int(dataset.load_mask(i).sum()) for i in range(len(dataset)))
    assert labels == sum(int(case["label"].sum()) for case in written.values())
    assert "next: make train EXP=dice_ce_msd" in capsys.readouterr().out
    assert leftovers(data) == []


def test_kvasir_without_published_checksum_loads_and_reruns_skip(server, tmp_path, capsys):
    served = tmp_path / "kvasir-seg.zip"
    written = archives.kvasir_zip(served, tmp_path / "w", [f"cju{i:04d}" for i in range(6)])
    server.add("/simula/kvasir-seg.zip", served)
    overrides = ["download=kvasir", f"download.base_url={server.url}/simula"]
    download(tmp_path, overrides)
    out = capsys.readouterr().out
    assert f"its sha256 is {hashlib.sha256(served.read_bytes()).hexdigest()}" in out
    root = tmp_path / "data" / "Kvasir-SEG"
    every = ImageMaskFolderDataset(root, split="all", class_names=("background", "polyp"))
    assert sorted(name for name, _, _ in every.samples) == sorted(written)
    item = every[0]
    assert item["image"].shape == (3, 24, 32) and np.array_equal(item["mask"].numpy(), written[item["name"]])
    download(tmp_path, overrides)  # complete: no request, the check runs again
    assert "is already complete" in capsys.readouterr().out
    assert len(server.gets("/simula/kvasir-seg.zip")) == 1


def test_room_for_unpacking_is_checked_before_the_download(server, tmp_path, monkeypatch):
    """Free space for the archive alone used to pass, and unpacking failed after the whole download."""
    from collections import namedtuple

    from segloss.download import fetch as fetch_module

    served = tmp_path / "kvasir-seg.zip"
    archives.kvasir_zip(served, tmp_path / "w", ["a", "b"])
    server.add("/kvasir-seg.zip", served)
    size = served.stat().st_size
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch_module.shutil, "disk_usage", lambda _: usage(10 * size, 8 * size, size + size // 2))
    with pytest.raises(DownloadError, match=rf"downloading and unpacking kvasir-seg.zip: {2 * size:,} bytes needed"):
        download(tmp_path, ["download=kvasir", f"download.base_url={server.url}", f"download.archives.0.size={size}"])
    assert server.gets("/kvasir-seg.zip") == []


def test_foreign_destination_is_refused_and_untouched(server, tmp_path):
    served = tmp_path / "kvasir-seg.zip"
    archives.kvasir_zip(served, tmp_path / "w", ["a", "b"])
    server.add("/kvasir-seg.zip", served)
    mine = tmp_path / "data" / "Kvasir-SEG" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own files")
    with pytest.raises(DownloadError, match="already exists and is not a complete copy of kvasir"):
        download(tmp_path, ["download=kvasir", f"download.base_url={server.url}"])
    assert [p.name for p in mine.parent.iterdir()] == ["notes.txt"] and mine.read_text() == "my own files"
    assert server.gets("/kvasir-seg.zip") == []


def test_corrupt_archive_leaves_no_dataset_folder_and_rerun_continues(server, tmp_path):
    good = tmp_path / "kvasir-seg.zip"
    archives.kvasir_zip(good, tmp_path / "w", ["a", "b", "c"])
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good.read_bytes()[:-200])  # truncated: no central directory
    server.add("/kvasir-seg.zip", bad)
    overrides = ["download=kvasir", f"download.base_url={server.url}"]
    with pytest.raises(DownloadError, match="corrupt or truncated"):
        download(tmp_path, overrides)
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == [".downloads"] and leftovers(data) == []
    server.routes["/kvasir-seg.zip"] = good  # the server is fixed: the same command continues
    download(tmp_path, overrides)
    assert len(ImageMaskFolderDataset(data / "Kvasir-SEG", split="all")) == 3


def _cityscapes_site(server: FileServer, tmp_path: Path) -> dict:
    served = tmp_path / "served"
    served.mkdir()
    labels = archives.cityscapes_zips(served, tmp_path / "w")
    for package, name in ((1, "gtFine_trainvaltest.zip"), (3, "leftImg8bit_trainvaltest.zip")):
        server.add(f"/file-handling/?packageID={package}", served / name, protected=True)
        (served / f"{name}.md5").write_text(f"{md5(served / name)}  {name}\n")  # the site's md5-sum answer
        server.add(f"/md5-sum/?packageID={package}", served / f"{name}.md5", protected=True)
    server.login = ("alice", "s3cret-passw0rd")
    return labels


def _site(server: FileServer) -> list[str]:
    """The loopback imitation as a mirror whose login form the user names explicitly."""
    return ["download=cityscapes", f"download.base_url={server.url}", f"download.login_url={server.url}/login/"]


def test_cityscapes_without_credentials_says_what_to_fetch(server, tmp_path, monkeypatch):
    _cityscapes_site(server, tmp_path)
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with pytest.raises(DownloadError) as err:
        download(tmp_path, ["download=cityscapes", f"download.base_url={server.url}"])
    message = str(err.value)
    for needed in ("gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip", "CITYSCAPES_USERNAME",
                   "CITYSCAPES_PASSWORD", "https://www.cityscapes-dataset.com/downloads/",
                   str(tmp_path / "data" / ".downloads")):  # fmt: skip
        assert needed in message
    assert server.log == []


def test_cityscapes_by_hand_goes_through_verify_and_unpack(server, tmp_path, monkeypatch):
    labels = _cityscapes_site(server, tmp_path)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    downloads = tmp_path / "data" / ".downloads"
    downloads.mkdir(parents=True)
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        (downloads / name).write_bytes((tmp_path / "served" / name).read_bytes())
    download(tmp_path, ["download=cityscapes", f"download.base_url={server.url}"])
    assert server.log == []
    dataset = CityscapesDataset(tmp_path / "data" / "cityscapes", split="val")
    assert [name for name, _, _ in dataset.samples] == ["lindau_000000_000019"] and set(labels) >= {
        "lindau_000000_000019"
    }


def test_cityscapes_with_credentials_logs_in_checks_the_published_md5_and_writes_no_secret(
    server, tmp_path, monkeypatch
):
    labels = _cityscapes_site(server, tmp_path)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "s3cret-passw0rd")
    download(tmp_path, _site(server))
    assert [(method, path) for method, path, _ in server.log] == [
        ("POST", "/login/"), ("GET", "/md5-sum/?packageID=1"), ("GET", "/md5-sum/?packageID=3"),
        ("GET", "/file-handling/?packageID=1"), ("GET", "/file-handling/?packageID=3"),
    ]  # fmt: skip
    train = CityscapesDataset(tmp_path / "data" / "cityscapes", split="train")
    assert len(train) == 2
    item = train[0]
    assert item["image"].shape == (3, 8, 16) and item["mask"].shape == (8, 16)
    assert int(item["mask"].max()) <= 255 and item["name"] in labels
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"s3cret-passw0rd" not in path.read_bytes(), path


def test_cityscapes_package_that_differs_from_the_published_md5_is_refused(server, tmp_path, monkeypatch):
    _cityscapes_site(server, tmp_path)
    (tmp_path / "served" / "gtFine_trainvaltest.zip.md5").write_text("0" * 32 + "  gtFine_trainvaltest.zip\n")
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "s3cret-passw0rd")
    with pytest.raises(DownloadError, match=r"gtFine_trainvaltest.zip .* failed verification: its md5 is"):
        download(tmp_path, _site(server))
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_cityscapes_wrong_password_is_a_clear_error(server, tmp_path, monkeypatch):
    _cityscapes_site(server, tmp_path)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong-password")
    with pytest.raises(DownloadError, match=r"gave no session .* check CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD"):
        download(tmp_path, _site(server))
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_a_login_answered_without_the_redirect_is_a_failed_login(server, tmp_path, monkeypatch):
    """The official client requires the 302; a page that sets some cookie used to count as logged in."""
    _cityscapes_site(server, tmp_path)
    server.login_without_redirect = True
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "s3cret-passw0rd")
    with pytest.raises(DownloadError, match=r"it answered 200 without the redirect of a successful login"):
        download(tmp_path, _site(server))
    assert [method for method, _, _ in server.log] == ["POST"]


def test_credentials_go_only_to_the_official_site_unless_a_login_url_is_named(server, tmp_path, monkeypatch):
    _cityscapes_site(server, tmp_path)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "alice")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "s3cret-passw0rd")
    with pytest.raises(DownloadError, match=r"is not Cityscapes's own site .* name its login form explicitly"):
        download(tmp_path, ["download=cityscapes", f"download.base_url={server.url}"])
    assert server.log == []  # nothing was sent anywhere


def test_entry_point_prints_next_command_and_plain_errors(server, tmp_path, monkeypatch, capsys):
    """The real `python -m segloss.download` prints the next command; a server error is one plain message and
    exit code 2 (checked in this process through the same error reporting, to spare a second start-up)."""
    from segloss.utils.config import report_user_errors

    served = tmp_path / "kvasir-seg.zip"
    archives.kvasir_zip(served, tmp_path / "w", ["a", "b", "c"])
    server.add("/kvasir-seg.zip", served)
    common = [f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_cli("download", ["download=kvasir", f"download.base_url={server.url}", *common])
    assert f"next: make train EXP=dice_kvasir DATA_ROOT={tmp_path / 'data'}" in proc.stdout.replace("\n", " ")
    server.status["/missing/kvasir-seg.zip"] = 503
    monkeypatch.delenv("SEGLOSS_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        download(tmp_path / "other", ["download=kvasir", f"download.base_url={server.url}/missing"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "HTTP 503" in err and "download.base_url=<mirror>" in err
    assert not (tmp_path / "other" / "data" / "Kvasir-SEG").exists()
