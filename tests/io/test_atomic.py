"""Atomic writes: readers never see half a file, and outputs get an ordinary file mode."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a" / "x.bin", b"data")
    finally:
        os.umask(old)
    path = tmp_path / "a" / "x.bin"
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
