"""img2dataset's other layouts through the stage: parquet (image bytes in the shard parquet) with
retry_failed merging into it, files (folders), and a rerun in another layout refused."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.crawl.plan import PlanMismatchError
from tasks.crawl.records import make_uid
from tasks.pool import open_pool

from . import images
from .sitegen import BASE
from .test_stage import _run, env  # noqa: F401 - the stage test's fixture: sample site + overrides


def test_parquet_and_files_layouts_through_the_stage(env):  # noqa: F811
    tmp, root, info, ov = env
    ok_uids = {make_uid(BASE + p) for p in info["expected"]}
    late_uid = make_uid(BASE + "img/late.jpg")
    metrics = _run(ov, {"output.output_format": "parquet"})
    assert metrics["successes"] == len(ok_uids) and metrics["pool_shards_synced_by_driver"] == 0
    shards = tmp / "crawl/shards"
    assert not list(shards.glob("*.tar"))
    table = pa.concat_tables([pq.read_table(p) for p in sorted(shards.glob("*.parquet"))])
    by_uid = {r["uid"]: r for r in table.to_pylist()}
    assert set(by_uid) == ok_uids | {late_uid}
    assert all(by_uid[u]["jpg"][:2] == b"\xff\xd8" for u in ok_uids)  # JPEG bytes in the row
    assert by_uid[late_uid]["jpg"] is None
    pool = {r["uid"]: r for r in open_pool(str(tmp / "lancedb")).to_arrow().to_pylist()}
    assert set(pool) == set(by_uid) and pool[late_uid]["shard"].endswith(".parquet")

    # retry_failed reads the images back from the parquet and writes them again with the new one
    (root / "site/img/late.jpg").write_bytes(images.jpeg(90, 90))
    retried = _run(
        ov,
        {
            "output.output_format": "parquet",
            "output.retry_failed": True,
            "output.retry_error_classes": ["http_404"],
        },
    )
    assert retried["recovered"] == 1
    table = pa.concat_tables([pq.read_table(p) for p in sorted(shards.glob("*.parquet"))])
    images_by_uid = dict(
        zip(table.column("uid").to_pylist(), table.column("jpg").to_pylist(), strict=True)
    )
    assert all(images_by_uid[u] for u in ok_uids | {late_uid}) and table.num_rows == len(pool)

    # another layout is another output: refused, then replaced with overwrite
    with pytest.raises(PlanMismatchError, match="output.overwrite=true"):
        _run(ov, {"output.output_format": "files"})
    _run(ov, {"output.output_format": "files", "output.overwrite": True})
    folders = sorted(p for p in shards.iterdir() if p.is_dir())
    names = {f.name for d in folders for f in d.iterdir()}
    assert {n.split(".")[0] for n in names} == ok_uids | {late_uid}
    assert {n.split(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
    pool = {r["uid"]: r for r in open_pool(str(tmp / "lancedb")).to_arrow().to_pylist()}
    assert pool[late_uid]["shard"] in {f"shards/{d.name}" for d in folders}
