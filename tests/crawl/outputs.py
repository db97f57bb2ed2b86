"""Reading a crawl output folder back in tests: which uids its tars and parquet files hold."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.parquet as pq


def shard_uids(out: Path) -> tuple[list[str], list[str]]:
    """Sorted uids found in the tars and in the parquet files beside them (they must agree)."""
    tar_uids: list[str] = []
    parquet_uids: list[str] = []
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            tar_uids += [n.split(".")[0] for n in tar.getnames() if n.endswith(".jpg")]
        parquet_uids += (
            pq.read_table(tar_path.with_suffix(".parquet"), columns=["uid"])
            .column("uid")
            .to_pylist()
        )
    return sorted(tar_uids), sorted(parquet_uids)
