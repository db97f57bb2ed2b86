"""The hashes the decontaminate stage stores for reuse (tasks/decontam/stored.py): a stale file
is never taken for a fresh one, and reused hashes are the ones hashing would give."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.decontam.hashing import hash_batch
from tasks.decontam.stored import (
    EVAL_COLUMNS,
    known_hashes,
    read_eval_hashes,
    views_fingerprint,
    write_table,
)
from tasks.decontam.views import EvalView
from tasks.imaging.resize import ResizeParams
from tasks.io.wds import write_tar
from tests.curate.conftest import image_bytes


def _eval_dir(root: Path, seed: int = 0) -> Path:
    write_tar(root / "set" / "test" / "0.tar", [("e0", {"png": image_bytes(seed, fmt="PNG")})])
    return root


def _views(n: int = 2) -> pa.Table:
    return pa.table(
        {
            "id": [f"set/e{i}" for i in range(n)],
            "variant": ["full"] * n,
            "image_sha256": ["s"] * n,
            "phash": ["0" * 16] * n,
            "dhash": ["f" * 16] * n,
            "image_reason": pa.nulls(n, pa.string()),
        }
    )


def test_fingerprint_follows_the_view_and_the_eval_bytes(tmp_path: Path) -> None:
    view = EvalView(mode="crawl", resize=ResizeParams(), crops=(0.9,))
    base = views_fingerprint(_eval_dir(tmp_path / "a"), view)
    assert views_fingerprint(_eval_dir(tmp_path / "b"), view) == base  # same bytes, same views
    assert views_fingerprint(_eval_dir(tmp_path / "c", seed=1), view) != base
    assert views_fingerprint(tmp_path / "a", EvalView(mode="crawl", crops=(0.8,))) != base
    assert views_fingerprint(tmp_path / "a", EvalView(mode="raw", crops=(0.9,))) != base
    other_resize = EvalView(mode="crawl", resize=ResizeParams(image_size=128), crops=(0.9,))
    assert views_fingerprint(tmp_path / "a", other_resize) != base


def test_eval_hashes_read_back_only_for_their_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "eval_hashes.parquet"
    table, why = read_eval_hashes(path, "f1")
    assert table is None and "does not exist" in why
    write_table(_views(), path, fingerprint="f1")
    table, _ = read_eval_hashes(path, "f1")
    assert table is not None and table.column_names == EVAL_COLUMNS and table.num_rows == 2
    table, why = read_eval_hashes(path, "f2")
    assert table is None and "other eval sets or another view" in why
    pq.write_table(_views(), path)  # written without a fingerprint (an older stage)
    assert read_eval_hashes(path, "f1")[0] is None
    write_table(_views().drop_columns(["dhash"]), path, fingerprint="f1")
    table, why = read_eval_hashes(path, "f1")
    assert table is None and "dhash" in why


def test_known_hashes_are_reused_by_content(tmp_path: Path) -> None:
    images = [image_bytes(1), image_bytes(2)]
    fresh = hash_batch(pa.table({"image": images}))
    write_table(fresh, tmp_path / "crawl_hashes.parquet")
    known = known_hashes(tmp_path / "crawl_hashes.parquet")
    assert set(known) == set(fresh.column("image_sha256").to_pylist())
    assert known_hashes(tmp_path / "missing.parquet") == {} and known_hashes(None) == {}
    # a listed digest is taken as stored (not decoded again); an unlisted image is hashed
    sha0 = fresh.column("image_sha256")[0].as_py()
    marked = {sha0: ("1" * 16, "2" * 16)}
    out = hash_batch(pa.table({"image": [*images, image_bytes(3)]}), known=marked).to_pylist()
    assert (out[0]["phash"], out[0]["dhash"]) == ("1" * 16, "2" * 16)
    assert out[1]["phash"] == fresh.column("phash")[1].as_py() and out[1]["image_reason"] is None
    assert out[2]["phash"] is not None and out[2]["image_sha256"] not in marked
