"""Shard tasks write their own pool rows (concurrently, safely); the per-host request rate; what
the resume fingerprint covers."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tasks.crawl.downloader import download_shard
from tasks.crawl.params import CrawlParams, DownloadParams, HttpParams, OutputParams
from tasks.crawl.plan import fingerprint
from tasks.imaging.resize import ResizeParams


def _shard_rows(index: int, n: int) -> list[dict]:
    return [
        {
            "uid": f"s{index}-{i:03d}",
            "url": f"http://h{index}/{i}.jpg",
            "status": "success" if i % 4 else "http_404",
            "image": b"\xff\xd8" + bytes(50) if i % 4 else None,
            "caption": f"shard {index} image {i}",
        }
        for i in range(n)
    ]


def _make_task():
    """A shard task's work after downloading, defined in a closure: cloudpickle ships it (and
    `rows`) to the workers by value, as the test module is not importable there."""

    def write_and_sync(out: str, uri: str, index: int, rows: list[dict], start_at: float) -> int:
        """Write the shard, then upsert its rows, all tasks committing at `start_at` so that
        their LanceDB commits do conflict."""
        import time

        from tasks.crawl.poolsync import sync_from_worker
        from tasks.crawl.writer import write_shard

        stats = write_shard(out, index, rows, "jpg", 0.0)
        time.sleep(max(0.0, start_at - time.time()))
        return sync_from_worker(uri, index, rows, stats["parquet_sha256"], "webdataset")

    return write_and_sync


def test_shard_tasks_upsert_the_pool_concurrently_and_the_driver_reads_nothing_again(
    tmp_path, ray_session
):
    import ray

    from tasks.crawl.poolsync import SYNC_TABLE, PoolSink
    from tasks.crawl.writer import write_shard
    from tasks.pool import connect, open_pool

    out, uri = str(tmp_path / "crawl"), str(tmp_path / "lancedb")
    sink = PoolSink(uri)  # the driver makes the tables first; its handles predate the writes
    task = ray.remote(num_cpus=0.5)(_make_task())
    start_at = time.time() + 4.0
    written = ray.get([task.remote(out, uri, i, _shard_rows(i, 40), start_at) for i in range(4)])
    assert written == [40] * 4
    uids = open_pool(uri).to_arrow().column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 160  # every row once, none lost to a conflict
    assert sorted(uids) == sorted(r["uid"] for i in range(4) for r in _shard_rows(i, 40))
    record = connect(uri).open_table(SYNC_TABLE).to_arrow().column("shard").to_pylist()
    assert sorted(record) == ["00000", "00001", "00002", "00003"]

    # The driver's final pass: shards the tasks synced are skipped by their markers, unread.
    assert sink.sync_missing(out, [0, 1, 2, 3]) == 0
    # A shard whose task was killed between its marker and its upsert is synced, once.
    write_shard(out, 4, _shard_rows(4, 10), "jpg", 0.0)
    assert sink.sync_missing(out, [0, 1, 2, 3, 4]) == 1
    assert sink.sync_missing(out, [0, 1, 2, 3, 4]) == 0
    pool = open_pool(uri).to_arrow()
    assert pool.num_rows == len(set(pool.column("uid").to_pylist())) == 170
    by_uid = {r["uid"]: r for r in pool.to_pylist()}
    assert by_uid["s4-001"]["shard"] == "shards/00004.tar"
    assert by_uid["s4-000"]["status"] == "http_404"


def test_a_files_layout_pool_row_names_its_folder(tmp_path):
    from tasks.crawl.poolsync import pool_rows

    table = pool_rows(_shard_rows(7, 2), 7, "files")
    assert table.column("shard").to_pylist() == ["shards/00007", "shards/00007"]
    assert pool_rows(_shard_rows(7, 1), 7, "parquet").column("shard")[0].as_py() == (
        "shards/00007.parquet"
    )


def _rate_config(rate: float) -> CrawlParams:
    return CrawlParams(
        http=HttpParams(
            retries=2, backoff_s=0.01, total_timeout_s=5.0, max_requests_per_second_per_host=rate
        ),
        download=DownloadParams(connections_per_shard=16),
        resize=ResizeParams(image_size=32),
    )


def _times(server, since: float, tag: str) -> list[float]:
    return sorted(t for t, path, _ in server.log if t >= since and tag in path)


def test_per_host_rate_spaces_every_request_retries_included(bad_server):
    rate = 20.0
    rows = [{"uid": f"r{i}", "url": f"{bad_server.base}delay/0/rate-{i}.jpg"} for i in range(6)]
    # 503 then 200: each of these takes two requests, the retry waits for its slot too
    rows += [{"uid": f"f{i}", "url": f"{bad_server.base}flaky.jpg?rate{i}"} for i in range(2)]
    since = time.monotonic()
    out = download_shard(rows, _rate_config(rate), ("127.0.0.1",))
    assert [r["status"] for r in out] == ["success"] * 8
    times = sorted(
        _times(bad_server, since, "/delay/0/rate-") + _times(bad_server, since, "/flaky")
    )
    assert len(times) == 10
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 1/rate apart as sent; as received, scheduling jitter of a few ms either way
    assert min(gaps) >= 0.5 / rate, gaps
    assert times[-1] - times[0] >= 9 * 0.95 / rate, gaps

    # Without a rate the same requests go out together: the check above can fail.
    since = time.monotonic()
    rows = [{"uid": f"u{i}", "url": f"{bad_server.base}delay/0/free-{i}.jpg"} for i in range(6)]
    download_shard(rows, _rate_config(0.0), ("127.0.0.1",))
    free = _times(bad_server, since, "/delay/0/free-")
    assert len(free) == 6 and free[-1] - free[0] < 5 / rate


def test_the_rate_is_per_host(bad_server):
    """Two hosts (127.0.0.1 and localhost, one server): each gets the rate, not half of it."""
    from tasks.crawl.http import HostRateLimit

    async def go() -> list[float]:
        limit = HostRateLimit(10.0)
        stamps = []
        for url in ["http://a/1", "http://b/1", "http://a/2", "http://b/2"]:
            await limit.wait(url)
            stamps.append(time.monotonic())
        return stamps

    import asyncio

    t = asyncio.run(go())
    assert t[1] - t[0] < 0.05 and t[2] - t[0] >= 0.09 and t[3] - t[2] < 0.05
    with pytest.raises(ValueError, match="max_requests_per_second_per_host"):
        HostRateLimit(0.0)


def test_resize_and_output_format_change_the_fingerprint():
    base = fingerprint(CrawlParams().plan_inputs())
    changed = [
        CrawlParams(resize=ResizeParams(image_size=128)),
        CrawlParams(resize=ResizeParams(encode_format="webp")),
        CrawlParams(resize=ResizeParams(resize_mode="center_crop")),
        CrawlParams(output=OutputParams(output_format="files")),
        CrawlParams(output=OutputParams(output_format="parquet")),
    ]
    prints = [fingerprint(p.plan_inputs()) for p in changed]
    assert base not in prints and len(set(prints)) == len(prints)
    # how fast a run goes is not part of it: a resumed run may change these
    same = [
        CrawlParams(download=DownloadParams(max_retries=0, shards_in_flight=8)),
        CrawlParams(http=HttpParams(max_requests_per_second_per_host=5.0)),
        CrawlParams(output=OutputParams(progress=False)),
    ]
    assert Counter(fingerprint(p.plan_inputs()) for p in same) == Counter({base: 3})


def _layout_rows(n: int) -> list[dict]:
    """A shard's rows as a crawl leaves them (every field of a success set), every 4th failed."""
    rows = []
    for i in range(n):
        ok = i % 4 != 3
        uid = f"{i:032x}"
        rows.append(
            {
                "uid": uid,
                "key": uid,
                "url": f"http://img.test/{i}.jpg",
                "caption": f"picture {i}",
                "texts": [f"picture {i}"],
                "page_url": "http://img.test/p.html",
                "language": "en",
                "source": "urls",
                "status": "success" if ok else "http_404",
                "error_message": "" if ok else "HTTP 404",
                "image": bytes([i]) * 64 if ok else None,
                "sha256": "ab" * 32 if ok else "",
                "width": 8 if ok else None,
                "height": 8 if ok else None,
                "original_width": 8 if ok else None,
                "original_height": 8 if ok else None,
                "bytes": 64 if ok else None,
                "extra": json.dumps({"license": "cc-by"}) if i == 0 else "",
            }
        )
    return rows


def test_curate_materialises_the_same_shards_from_every_crawl_layout(tmp_path):
    """Curate reads the crawl's shards through tasks/io/crawlshards.py: the pool's `shard`
    column may name a tar, a files/ folder or an image parquet; the training shards written
    from each are the same samples."""
    from tasks.crawl.writer import FORMATS, shard_path, write_shard
    from tasks.curate.features import existing_shard
    from tasks.curate.materialise import materialise
    from tasks.io.wds import iter_samples

    rows = _layout_rows(10)
    fields = {r["uid"]: {"text": r["caption"], "texts": r["texts"]} for r in rows if r["image"]}
    written = {}
    for fmt in FORMATS:
        crawl = tmp_path / fmt / "crawl"
        write_shard(str(crawl), 0, rows, "jpg", 0.0, fmt)
        shard = existing_shard(crawl, shard_path(0, fmt))
        assert shard is not None and shard.exists()
        out = materialise(fields, dict.fromkeys(fields, shard), tmp_path / fmt / "out", 4, 0)
        written[fmt] = [
            (key, parts["jpg"], parts["txt"], json.loads(parts["json"]))
            for tar in out
            for key, parts in iter_samples(tar)
        ]
    assert len(written["webdataset"]) == len(fields) == 8
    assert written["files"] == written["webdataset"]
    assert written["parquet"] == written["webdataset"]
    # the extra input column of one row: in its .json only (a null elsewhere is no key)
    assert [w[3].get("license") for w in written["parquet"]].count("cc-by") == 1
    assert all("license" in w[3] or w[0] != f"{0:032x}" for w in written["parquet"])
