"""DataComp's uid file and the uid_subset step: written as DataComp's own code writes them,
read back from every supported form, applied to a pool with reasons; bad files name themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.crawl.records import make_uid
from tasks.curate.formats import (
    UidFileError,
    in_uid_set,
    read_uid_file,
    write_datacomp_uids,
)
from tasks.curate.params import CurateParams, UidSubsetParams
from tasks.curate.steps.base import StepContext
from tasks.curate.steps.uid_subset import UidSubset

UIDS = [make_uid(f"https://example.org/{i}.jpg") for i in range(50)]


def _datacomp_reference(uids: list[str]) -> np.ndarray:
    """DataComp's published conversion (its baselines' `uids_str_to_np`), written out here."""
    processed = np.array(
        [(int(uid[:16], 16), int(uid[16:32], 16)) for uid in uids], np.dtype("u8,u8")
    )
    processed.sort()
    return np.unique(processed)


def test_subset_file_equals_datacomps_own_conversion(tmp_path: Path) -> None:
    chosen = UIDS[::3] + UIDS[:2]  # duplicates in, unsorted
    path = tmp_path / "subset_uids.npy"
    assert write_datacomp_uids(chosen, path) == len(set(chosen))
    written = np.load(path)
    assert written.dtype == np.dtype("u8,u8")
    assert np.array_equal(written, _datacomp_reference(chosen))
    pairs = [tuple(int(x) for x in row) for row in written.tolist()]
    assert pairs == sorted(set(pairs)), "sorted and unique, as DataComp stores subsets"
    mask = in_uid_set(UIDS, read_uid_file(path))
    assert [u for u, m in zip(UIDS, mask, strict=True) if m] == [
        u for u in UIDS if u in set(chosen)
    ]


def test_every_form_reads_the_same_subset(tmp_path: Path) -> None:
    chosen = UIDS[5:20]
    pq.write_table(pa.table({"uid": chosen}), tmp_path / "s.parquet")
    (tmp_path / "s.txt").write_text("\n".join(chosen) + "\n")
    np.save(tmp_path / "s.npy", _datacomp_reference(chosen))
    forms = [read_uid_file(tmp_path / f"s.{ext}") for ext in ("npy", "parquet", "txt")]
    assert all(np.array_equal(forms[0], f) for f in forms[1:])
    long_uid = "0123456789abcdef0123456789abcdef"  # a 32-hex DataComp uid
    assert in_uid_set([long_uid, "not-hex"], _datacomp_reference([long_uid])).tolist() == [
        True,
        False,
    ]


def test_bad_uid_files_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "ints.npy", np.arange(4))
    with pytest.raises(UidFileError, match=r"ints\.npy: dtype int64"):
        read_uid_file(tmp_path / "ints.npy")
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(UidFileError, match=r"nocol\.parquet: no 'uid' column"):
        read_uid_file(tmp_path / "nocol.parquet")
    (tmp_path / "bad.txt").write_text(UIDS[0] + "\nxyz\n")
    with pytest.raises(UidFileError, match=r"bad\.txt: row 1 is not a hex uid"):
        read_uid_file(tmp_path / "bad.txt")
    with pytest.raises(UidFileError, match=r"missing\.npy: cannot read"):
        read_uid_file(tmp_path / "missing.npy")
    with pytest.raises(UidFileError, match="unknown uid file format"):
        read_uid_file(tmp_path / "s.csv")


def test_uid_subset_step_keeps_listed_rows_with_reasons(tmp_path: Path) -> None:
    listed = tmp_path / "published.npy"
    np.save(listed, _datacomp_reference(UIDS[:10]))
    step = UidSubset(UidSubsetParams(path=str(listed)))
    ctx = StepContext(params=CurateParams(), out_dir=tmp_path)
    step.setup(ctx)
    rows = pa.table({"uid": UIDS[5:15]})
    result = step(rows, ctx)
    assert result.keep.tolist() == [True] * 5 + [False] * 5
    assert result.reason == [None] * 5 + ["not_in_uid_subset"] * 5
    assert result.metrics == {"uid_subset_listed": 10, "uid_subset_found": 5}


def test_uid_subset_without_a_file_is_refused() -> None:
    with pytest.raises(ValueError, match="uid_subset.path"):
        CurateParams(steps=["uid_subset"])
