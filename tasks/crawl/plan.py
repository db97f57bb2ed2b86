"""The input plan: every image to download, sorted by uid and cut into shards, saved once.

Saving the plan is what makes resume exact: a restarted crawl downloads the same shards with the
same rows instead of re-crawling a site whose discovery order may differ.

The plan is files, never rows in the driver (tasks.crawl.planparts): `_plan/parts/pNNNN.parquet`
(uid-range partitions, each sorted by uid) and `_plan/plan.json`, the commit point written last,
holding the fingerprint, the partition files with their row counts and the shard size. Row `i`
of the concatenated partitions is the i-th image by uid; shard `k` holds rows
[k * shard_size, (k + 1) * shard_size) of the first `rows` (inputs.max_images keeps the lowest
uids). A shard task reads only its rows (`ShardRef.rows`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from tasks.base import StageError
from tasks.crawl.records import ImageRef
from tasks.io import put_atomic
from tasks.settings import join_uri

log = logging.getLogger(__name__)

PLAN_COLUMNS = (
    "uid",
    "key",
    "url",
    "caption",
    "texts",
    "page_url",
    "language",
    "source",
    "extra",
    "shard",
)
PLAN_FORMAT = 2  # plan.json's layout: 2 = partition files (1 was one plan.parquet of all rows)


class PlanMismatchError(StageError):
    """The output folder holds a crawl of other inputs; refuse rather than mix two crawls."""


def plan_rows(refs: list[ImageRef], shard_size: int, max_images: int = 0) -> list[dict[str, Any]]:
    """Rows sorted by uid, with shard indices, all in memory: the reference the partitioned
    plan is tested against (same rows, same shards) and a helper for small in-memory plans."""
    refs = sorted(refs, key=lambda r: r.uid)
    if max_images:
        refs = refs[:max_images]
    return [
        {
            "uid": r.uid,
            "key": r.uid,
            "url": r.url,
            "caption": r.text,
            "texts": list(r.texts),
            "page_url": r.page_url,
            "language": r.language,
            "source": r.source,
            "extra": r.extra,
            "shard": i // shard_size,
        }
        for i, r in enumerate(refs)
    ]


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_uri(output_dir: str, name: str) -> str:
    return join_uri(output_dir, "_plan", name)


REFUSED_COLUMNS = ("source", "input", "row", "url", "status", "error_message")


def REFUSED_SCHEMA() -> Any:  # noqa: N802 - a constant, built lazily (pyarrow is heavy)
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c == "row" else pa.string()) for c in REFUSED_COLUMNS])


def save_refused(output_dir: str, work_dir: str) -> int:
    """`refused.parquet`: every input refused before fetching, with its reason (URLs redacted),
    streamed from the extraction tasks' refused part files in input order.

    Written with the plan, before its commit point; always present (possibly empty) so a reader
    never has to guess whether nothing was refused or nothing was written.
    """
    import fsspec
    import pyarrow.parquet as pq

    from tasks.crawl.planparts import _list_files

    schema = REFUSED_SCHEMA()
    uri = join_uri(output_dir, "refused.parquet")
    fs, path = fsspec.core.url_to_fs(uri)
    tmp = f"{path}.writing.tmp"
    n = 0
    with fs.open(tmp, "wb") as fh, pq.ParquetWriter(fh, schema) as out:
        for f in _list_files(join_uri(work_dir, "refused")):
            with fsspec.open(f, "rb") as part:
                table = pq.read_table(part, schema=schema)
            out.write_table(table)
            n += table.num_rows
        if n == 0:
            out.write_table(schema.empty_table())
    fs.mv(tmp, path)
    return n


@dataclass(frozen=True)
class Plan:
    """A committed plan as plan.json describes it (small: counts and file names only)."""

    output_dir: str
    meta: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def shard_size(self) -> int:
        return int(self.meta["shard_size"])

    @property
    def shards(self) -> int:
        return math.ceil(self.rows / self.shard_size) if self.rows else 0

    def shard_count(self, index: int) -> int:
        """Rows of shard `index`."""
        return max(0, min(self.shard_size, self.rows - index * self.shard_size))

    def shard_rows(self, index: int) -> list[dict[str, Any]]:
        """The plan rows of shard `index`, read from the partition files it spans."""
        from tasks.crawl.planparts import read_plan_slice

        start = index * self.shard_size
        stop = min(start + self.shard_size, self.rows)
        rows: list[dict[str, Any]] = []
        offset = 0
        for part in self.meta["partitions"]:
            n = int(part["rows"])
            if n and offset < stop and offset + n > start:
                lo, hi = max(start, offset) - offset, min(stop, offset + n) - offset
                rows.extend(read_plan_slice(plan_uri(self.output_dir, part["file"]), lo, hi))
            offset += n
            if offset >= stop:
                break
        return [{**r, "shard": index} for r in rows]


@dataclass(frozen=True)
class ShardRef:
    """What a shard job carries instead of its rows: the plan folder and the shard index."""

    output_dir: str
    index: int

    def rows(self) -> list[dict[str, Any]]:
        found = load_plan(self.output_dir)
        if found is None:
            raise FileNotFoundError(f"{self.output_dir}: no committed plan (_plan/plan.json)")
        return found.shard_rows(self.index)


def load_plan(output_dir: str) -> Plan | None:
    """The committed plan of `output_dir`, None when there is none (or one of an older layout,
    which a rerun replaces like a plan of other inputs)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(plan_uri(output_dir, "plan.json"))
    if not fs.exists(path):
        return None
    meta = json.loads(fs.cat_file(path))
    if meta.get("format") != PLAN_FORMAT:
        return Plan(output_dir, {**meta, "rows": 0, "shard_size": 1, "partitions": []})
    return Plan(output_dir, meta)


def read_all_rows(output_dir: str) -> list[dict[str, Any]]:
    """Every plan row in memory: for tests and small plans only."""
    plan = load_plan(output_dir)
    if plan is None:
        return []
    return [r for i in range(plan.shards) for r in plan.shard_rows(i)]


def build_plan(
    output_dir: str, work_dir: str, partitions: int, shard_size: int, max_images: int
) -> tuple[list[dict[str, Any]], int, int]:
    """Reduce every partition in a Ray task; return (partition entries, kept rows, pairs).

    The driver receives one count per partition; the rows stay in the partition files."""
    import ray

    from tasks.crawl.planparts import get_unwrapped, reduce_partition

    remote = ray.remote(num_cpus=1)(reduce_partition)
    futures = [
        remote.remote(work_dir, i, plan_uri(output_dir, f"parts/p{i:04d}.parquet"))
        for i in range(partitions)
    ]
    counts = sorted(get_unwrapped(futures), key=lambda c: c["part"])
    entries = [{"file": f"parts/p{c['part']:04d}.parquet", "rows": c["rows"]} for c in counts]
    total = sum(c["rows"] for c in counts)
    kept = min(total, max_images) if max_images else total
    return entries, kept, sum(c["pairs"] for c in counts)


def commit_plan(output_dir: str, meta: dict[str, Any]) -> None:
    """plan.json, the commit point: written last, after every partition and refused.parquet."""
    put_atomic(
        plan_uri(output_dir, "plan.json"),
        json.dumps({**meta, "format": PLAN_FORMAT}, indent=2, default=str).encode(),
    )


def by_shard(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    shards: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        shards.setdefault(int(row["shard"]), []).append(row)
    return shards
