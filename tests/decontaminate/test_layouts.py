"""decontaminate reads a crawl written in any of its layouts (output.output_format webdataset,
files, parquet) and finds the same hashes and the same planted copy in each."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl.writer import write_shard
from tasks.io.wds import iter_samples, sample_json

from .conftest import PLANTED_UID, TinyCrawl


def _rewrite(tiny: TinyCrawl, out: Path, fmt: str) -> Path:
    """The tiny crawl's samples written again by the crawl's writer in layout `fmt`."""
    for index, tar in enumerate(sorted(tiny.shards.glob("*.tar"))):
        rows = []
        for key, parts in iter_samples(tar):
            meta = sample_json(parts)
            rows.append(
                {
                    "uid": key,
                    "key": key,
                    "url": meta["url"],
                    "caption": parts["txt"].decode(),
                    "status": "success",
                    "image": parts["jpg"],
                }
            )
        rows.append({"uid": f"failed{index}", "url": "http://x.test/f.jpg", "status": "http_404"})
        write_shard(str(out), index, rows, "jpg", 0.0, fmt)
    return out / "shards"


def _params(tiny: TinyCrawl, shards: Path, out: Path):  # type: ignore[no-untyped-def]
    from tasks.decontaminate.params import DecontaminateParams

    return DecontaminateParams(
        paths={
            "shards": str(shards),
            "eval_dir": str(tiny.eval_dir),
            "planted": str(tiny.planted),
            "out_dir": str(out),
        },
        compute={"rows_per_block": 4},
    )


def test_every_layout_gives_the_same_hashes(tmp_path, tiny_crawl, ray_session) -> None:
    from tasks.decontaminate.stage import crawl_features

    cols = ["uid", "url", "image_sha256", "phash", "dhash"]
    want = crawl_features(_params(tiny_crawl, tiny_crawl.shards, tmp_path)).select(cols)
    assert want.num_rows == len(tiny_crawl.clean) + 1
    for fmt in ("webdataset", "files", "parquet"):
        shards = _rewrite(tiny_crawl, tmp_path / fmt, fmt)
        got = crawl_features(_params(tiny_crawl, shards, tmp_path)).select(cols)
        assert got.equals(want), fmt


@pytest.mark.slow
def test_the_stage_flags_the_planted_copy_in_a_parquet_crawl(tmp_path, tiny_crawl, ray_session):
    from tasks.decontaminate.stage import run

    shards = _rewrite(tiny_crawl, tmp_path / "parquet", "parquet")
    metrics = run(_params(tiny_crawl, shards, tmp_path / "out"))
    flagged = pq.read_table(tmp_path / "out" / "flagged_uids.parquet").column("uid").to_pylist()
    assert set(flagged) == {PLANTED_UID} and metrics["decontam_recall"] == 1.0


def test_the_shared_row_reader_reads_every_layout(tmp_path, tiny_crawl) -> None:
    """tasks.decontam.reading.read_shard (curate's feature pipeline reads crawl rows with it):
    the same rows from every layout, a listed key without an image kept with empty bytes."""
    from tasks.decontam.reading import read_shard
    from tasks.io.crawlshards import list_shards

    got = {}
    for fmt in ("webdataset", "files", "parquet"):
        shard = list_shards(_rewrite(tiny_crawl, tmp_path / fmt, fmt))[1]
        item = {"shard": shard.path, "uids": [PLANTED_UID, "failed1"], "texts": ["a", "b"]}
        got[fmt] = read_shard(item)
    assert [r["uid"] for r in got["parquet"]] == [PLANTED_UID, "failed1"]
    assert got["parquet"][0]["image"] and got["parquet"][1]["image"] == b""
    assert got["files"] == got["webdataset"] == got["parquet"]
