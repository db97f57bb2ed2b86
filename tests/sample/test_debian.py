"""Fetching and unpacking Debian packages: cache hits, and clear errors when things go wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.sample import debian


def test_missing_apt_get_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(debian.DebianError) as err:
        debian.ensure_packages(["wordnet-base"], tmp_path)
    message = str(err.value)
    assert "`apt-get` not found" in message and "wordnet-base" in message
    assert str(tmp_path / "debs") in message  # where to put the .deb by hand


def test_failed_download_mentions_apt_get_update(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text(
        "#!/bin/sh\necho 'E: Unable to locate package wordnet-base' >&2\nexit 100\n"
    )
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(debian.DebianError, match="apt-get update"):
        debian.download("wordnet-base", tmp_path / "debs")


def test_corrupt_deb_is_named(tmp_path):
    debs = tmp_path / "debs"
    debs.mkdir()
    bad = debs / "wordnet-base_3.0-0_all.deb"
    bad.write_bytes(b"!<arch>\nthis is not a debian package")
    with pytest.raises(debian.DebianError) as err:
        debian.ensure_packages(["wordnet-base"], tmp_path)
    assert str(bad) in str(err.value) and "corrupt" in str(err.value)
    assert not (tmp_path / "extracted" / "wordnet-base").exists()  # nothing half-unpacked


def test_missing_dpkg_deb_says_what_to_install(tmp_path, monkeypatch):
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(b"x")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(debian.DebianError, match="`dpkg-deb` not found.*dpkg"):
        debian.extract(deb, tmp_path / "x")


def test_extraction_is_skipped_when_marked(tmp_path, monkeypatch):
    """A real (tiny) package, unpacked once; the second call must not run dpkg-deb again."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: tiny\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "hello.txt").write_text("hi")
    deb = tmp_path / "tiny_1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    dest = debian.extract(deb, tmp_path / "out")
    assert (dest / "usr" / "share" / "hello.txt").read_text() == "hi"
    monkeypatch.setattr(subprocess, "run", _forbidden)
    assert debian.extract(deb, tmp_path / "out") == dest
    assert debian.find_path(dest, "hello*.txt", "tiny") == dest / "usr" / "share" / "hello.txt"


def _forbidden(*args: object, **kwargs: object) -> None:
    raise AssertionError("dpkg-deb ran although the package was already unpacked")


def test_find_path_error_names_package(tmp_path: Path):
    with pytest.raises(debian.DebianError, match="'wordnet-base'.*data.noun"):
        debian.find_path(tmp_path, "data.noun", "wordnet-base")
