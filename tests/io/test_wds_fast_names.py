"""member_names' fast header reader (tasks.io.wds._plain_member_names): the same names as
tarfile on what it reads, and None (tarfile takes over) on everything it does not know."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from tasks.io.wds import ShardError, _plain_member_names, member_names, write_tar


def _tarfile_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar if m.isreg()]


def _write(path: Path, keys: list[str], fmt: int = tarfile.PAX_FORMAT) -> Path:
    samples = [
        (k, {"jpg": bytes(300 + 211 * i), "txt": f"caption {k}"}) for i, k in enumerate(keys)
    ]
    write_tar(path, samples, fmt=fmt)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_plain_shards_are_read_fast_with_tarfiles_names(tmp_path: Path, fmt: int) -> None:
    path = _write(tmp_path / "a.tar", [f"{i:06d}" for i in range(7)], fmt)
    fast = _plain_member_names(path)
    assert fast is not None, "an ASCII-named shard must take the fast path"
    assert fast == _tarfile_names(path) == member_names(path)
    assert len(fast) == 14


def test_directory_members_are_skipped_like_tarfile(tmp_path: Path) -> None:
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("sub"), None)  # a regular empty file named like a folder
        info = tarfile.TarInfo("folder")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    assert _plain_member_names(path) == _tarfile_names(path) == ["sub"]


def test_pax_headers_gzip_and_long_names_fall_back_to_tarfile(tmp_path: Path) -> None:
    pax = _write(tmp_path / "pax.tar", ["plain", "größe"])  # non-ASCII: a PAX 'x' header
    long = _write(tmp_path / "long.tar", ["x" * 120])  # > 100 characters: PAX path record
    gz = tmp_path / "z.tar.gz"
    gz.write_bytes(gzip.compress(_write(tmp_path / "z.tar", ["a", "b"]).read_bytes()))
    for path in (pax, long, gz):
        assert _plain_member_names(path) is None, path
        with tarfile.open(path, "r:*") as tar:
            expected = [m.name for m in tar if m.isreg()]
        assert member_names(path) == expected


def test_truncated_shard_still_fails_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.tar", ["a", "b", "c"])
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data.rstrip(b"\0"))  # the end-of-archive blocks and the last padding gone
    assert _plain_member_names(cut) is None
    with pytest.raises(ShardError, match="cut.tar"):
        member_names(cut)


def test_bad_checksum_is_left_to_tarfile(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.tar", ["a", "b"])
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # the first header's name changes, its checksum no longer matches
    path.write_bytes(bytes(data))
    assert _plain_member_names(path) is None
    with pytest.raises(ShardError, match="c.tar"):
        member_names(path)
