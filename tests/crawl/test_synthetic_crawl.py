"""2,200 synthetic URL rows (about 2,000 distinct) crawled end to end through the stage (real downloads from the loopback
image server of tests/support/synthetic_web.py): every unique uid lands in the shards exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl.records import make_uid
from tests.crawl.outputs import shard_uids
from tests.support.synthetic_web import ImageServer, write_url_list


@pytest.fixture()
def server():  # type: ignore[no-untyped-def]
    with ImageServer() as s:
        yield s


def test_two_thousand_synthetic_urls_end_to_end(
    tmp_path: Path, mlflow_store, ray_session, server, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from tasks import PROJECT_ROOT
    from tasks.runner import run_stage
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    lists = [tmp_path / "a.parquet", tmp_path / "b.csv.gz"]
    write_url_list(lists[0], 1200, server.base, duplicate_every=12)  # URLs repeat: texts merge
    write_url_list(lists[1], 1000, server.base, start=1100, duplicate_every=10)  # overlaps a
    import pyarrow.csv as pcsv

    urls = pq.read_table(lists[0]).column("url").to_pylist()
    urls += pcsv.read_csv(lists[1]).column("url").to_pylist()
    unique = {make_uid(u) for u in urls}
    assert 1900 < len(unique) < len(urls) == 2200
    overrides = {
        "inputs.sources": ["urls"],
        "inputs.url_lists": [str(p) for p in lists],
        "inputs.sample_site_dir": "",
        "inputs.archives_index": "",
        "inputs.save_additional_columns": ["source_id"],
        "inputs.shard_size": 300,
        "policy.allow_addresses": ["127.0.0.1"],
        "download.shards_in_flight": 2,
        "download.connections_per_shard": 16,
        "output.output_dir": str(tmp_path / "crawl"),
        "output.lancedb_uri": str(tmp_path / "lancedb"),
        "output.progress": False,
        "http.retries": 0,
    }
    m = run_stage("crawl", PROJECT_ROOT / "params/crawl.yaml", overrides=overrides)
    statuses = [
        s
        for f in sorted((tmp_path / "crawl/shards").glob("*.parquet"))
        for s in pq.read_table(f, columns=["status"]).column("status").to_pylist()
    ]
    assert Counter(statuses) == {"success": len(unique)}
    tar_uids, parquet_uids = shard_uids(tmp_path / "crawl")
    assert tar_uids == parquet_uids == sorted(unique)  # each uid once, none lost
    assert m["unique_images"] == len(unique) and m["urls_rows"] == 2200
    assert m["shards_planned"] == -(-len(unique) // 300)
    assert server.image_requests == len(unique)  # a URL listed twice was downloaded once
