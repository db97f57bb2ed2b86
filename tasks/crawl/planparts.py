"""Plan partitions: image refs written by uid range, merged per URL and sorted by uid per partition.

The crawl's plan is built without ever holding every ref in one process:
1. each extraction task (one per input file) screens its refs and appends them, tagged with a
   sequence key (input index, ref number), to the partition of their uid under
   `_plan/work/refs/pNNNN/` (parquet part files: a partition's buffer is written when it
   reaches PART_BYTES, or, when all buffers together reach BUFFER_BYTES, the largest buffers
   are written until half of that is left: memory stays bounded by bytes, and a part file
   holds about BUFFER_BYTES / partitions at least instead of a fixed count of refs spread over
   every partition);
2. one reduce task per partition reads its part files, orders them by the sequence key, merges
   the refs of each URL exactly as `records.merge_refs` does (texts first seen first, the first
   non-empty language and extra), sorts the merged refs by uid and writes `_plan/parts/pNNNN.parquet`.
A partition is a uid-prefix RANGE (the first 32 bits of the sha224 uid, cut into equal ranges),
so partition order followed by the order inside each partition is the global uid order: the
driver only adds up per-partition row counts to number the rows and cut the shards.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from tasks.crawl.language import fill_languages
from tasks.crawl.records import ImageRef, make_uid
from tasks.settings import join_uri

BUFFER_BYTES = 256 << 20  # estimated bytes of refs one writer buffers over all its partitions
PART_BYTES = 16 << 20  # a partition's buffer is written as one part file once it holds this
REF_OVERHEAD = 420  # bytes a buffered ref costs beyond its strings (Python objects, ~10%)
REFUSED_ROWS = 100_000  # refused rows a writer buffers before writing them
ROW_GROUP_ROWS = 4096  # rows per parquet row group of a partition: a shard reads only its groups
PLAN_FIELDS = ("uid", "key", "url", "caption", "texts", "page_url", "language", "source", "extra")


def partition_of(uid: str, partitions: int) -> int:
    """The partition of a uid: its first 32 bits cut into `partitions` equal ranges (monotone)."""
    return (int(uid[:8], 16) * partitions) >> 32


def _ref_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("seq_input", pa.int64()),
            ("seq_ref", pa.int64()),
            ("url", pa.string()),
            ("texts", pa.list_(pa.string())),
            ("page_url", pa.string()),
            ("language", pa.string()),
            ("source", pa.string()),
            ("extra", pa.string()),
        ]
    )


def plan_schema() -> Any:
    """Columns of a plan partition file (the plan row of `plan.PLAN_COLUMNS` less `shard`)."""
    import pyarrow as pa

    return pa.schema(
        [(c, pa.list_(pa.string()) if c == "texts" else pa.string()) for c in PLAN_FIELDS]
    )


def _write_table(uri: str, table: Any, row_group_size: int | None = None) -> None:
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    with fs.open(path, "wb") as fh:  # plan.json is the commit point: no rename needed here
        fh.write(buf.getvalue())


def ref_bytes(ref: ImageRef) -> int:
    """Estimated memory of one buffered ref: its strings plus REF_OVERHEAD."""
    strings = (ref.url, ref.page_url, ref.language, ref.source, ref.extra)
    return REF_OVERHEAD + sum(map(len, strings)) + sum(len(t) + 8 for t in ref.texts)


class PartWriter:
    """Appends refs of one input (one task) to the partition files; refused rows to their own.

    Buffers are bounded by bytes, not by a count of refs: at 4096 partitions a flush of every
    partition per 100k refs wrote ~24-ref files (1B refs -> 40M small files). Here a
    partition's buffer is written when it reaches PART_BYTES, and when all buffers together
    reach BUFFER_BYTES the largest are written until half of it is left, so a task's memory
    stays under about BUFFER_BYTES and its files are as large as that allows. The reduce
    orders refs by their sequence keys, so how refs are cut into files never changes the plan.
    """

    def __init__(self, work_dir: str, task: int, partitions: int) -> None:
        self.work_dir, self.task, self.partitions = work_dir, task, partitions
        self.buffers: dict[int, list[tuple[int, int, ImageRef]]] = {}
        self.sizes: dict[int, int] = {}  # estimated bytes per partition buffer
        self.counts: dict[int, int] = {}  # part files written per partition (their names)
        self.refused: list[dict[str, Any]] = []
        self.buffered = self.peak_buffered = self.files = 0
        self.flushes = self.written = self.refused_count = 0

    def add(self, ref: ImageRef, seq_input: int, seq_ref: int) -> None:
        part = partition_of(make_uid(ref.url), self.partitions)
        self.buffers.setdefault(part, []).append((seq_input, seq_ref, ref))
        size = ref_bytes(ref)
        self.sizes[part] = self.sizes.get(part, 0) + size
        self.buffered += size
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        if self.sizes[part] >= PART_BYTES:
            self._write_part(part)
        elif self.buffered >= BUFFER_BYTES:
            for big in sorted(self.sizes, key=self.sizes.__getitem__, reverse=True):
                if self.buffered <= BUFFER_BYTES // 2:
                    break
                self._write_part(big)

    def refuse(self, rows: Iterable[dict[str, Any]]) -> None:
        self.refused.extend(rows)
        if len(self.refused) >= REFUSED_ROWS:
            self._write_refused()

    def _write_part(self, part: int) -> None:
        """One partition's buffer as one part file `tTTTTTTT-NNNNN.parquet`, then emptied."""
        import pyarrow as pa

        items = self.buffers.pop(part, [])
        self.buffered -= self.sizes.pop(part, 0)
        if not items:
            return
        table = pa.Table.from_pydict(
            {
                "seq_input": [i[0] for i in items],
                "seq_ref": [i[1] for i in items],
                "url": [i[2].url for i in items],
                "texts": [list(i[2].texts) for i in items],
                "page_url": [i[2].page_url for i in items],
                "language": [i[2].language for i in items],
                "source": [i[2].source for i in items],
                "extra": [i[2].extra for i in items],
            },
            schema=_ref_schema(),
        )
        n = self.counts.get(part, 0)
        self.counts[part] = n + 1
        name = f"t{self.task:07d}-{n:05d}.parquet"
        _write_table(join_uri(self.work_dir, "refs", f"p{part:04d}", name), table)
        self.written += len(items)
        self.files += 1

    def _write_refused(self) -> None:
        import pyarrow as pa

        from tasks.crawl.plan import REFUSED_SCHEMA

        if not self.refused:
            return
        name = f"t{self.task:07d}-{self.flushes:05d}.parquet"
        table = pa.Table.from_pylist(self.refused, schema=REFUSED_SCHEMA())
        _write_table(join_uri(self.work_dir, "refused", name), table)
        self.refused_count += len(self.refused)
        self.refused = []
        self.flushes += 1

    def flush(self) -> None:
        """Write every buffer (the task's end)."""
        for part in sorted(self.buffers):
            self._write_part(part)
        self._write_refused()


def _list_files(uri: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(f"{path}/*.parquet"))


def read_parts(uri: str, schema: Any) -> Any:
    """Every part file under `uri` as one table (empty with `schema` when there are none)."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in _list_files(uri):
        with fsspec.open(f, "rb") as fh:
            tables.append(pq.read_table(fh, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def merge_partition(table: Any) -> tuple[list[dict[str, Any]], int]:
    """Plan rows (sorted by uid) of one partition's refs, and its (url, text) pair count.

    Refs are taken in sequence order (input, ref number), the order `merge_refs` sees them in
    the in-memory path, so each URL keeps its texts first seen first, its first page, source and
    extra, and its first non-empty language and extra."""
    import pyarrow.compute as pc

    order = pc.sort_indices(table, sort_keys=[("seq_input", "ascending"), ("seq_ref", "ascending")])
    table = table.take(order)
    cols = {
        c: table.column(c).to_pylist()
        for c in ("url", "texts", "page_url", "language", "source", "extra")
    }
    # languages extraction left for later (extract_wat(languages=False)): once per distinct text
    cols["language"] = fill_languages(cols["url"], cols["texts"], cols["language"])
    by_url: dict[str, dict[str, Any]] = {}
    pairs: dict[str, set[str]] = {}
    for i, url in enumerate(cols["url"]):
        texts = cols["texts"][i] or []
        kept = by_url.get(url)
        if kept is None:
            kept = {
                "url": url,
                "texts": [],
                "page_url": cols["page_url"][i],
                "language": cols["language"][i],
                "source": cols["source"][i],
                "extra": cols["extra"][i],
            }
            by_url[url] = kept
            pairs[url] = set()
        for text in texts:
            if text and text not in kept["texts"]:
                kept["texts"].append(text)
        if not kept["language"] and cols["language"][i]:
            kept["language"] = cols["language"][i]
        if not kept["extra"] and cols["extra"][i]:
            kept["extra"] = cols["extra"][i]
        pairs[url].update(texts or [""])
    rows = []
    for kept in by_url.values():
        uid = make_uid(kept["url"])
        rows.append(
            {
                "uid": uid,
                "key": uid,
                "caption": kept["texts"][0] if kept["texts"] else "",
                **kept,
            }
        )
    rows.sort(key=lambda r: r["uid"])  # stable: equal uids keep their first-seen order
    return rows, sum(len(s) for s in pairs.values())


def reduce_partition(work_dir: str, part: int, out_uri: str) -> dict[str, int]:
    """Merge one partition's part files into its sorted plan partition; counts only go back."""
    import pyarrow as pa

    table = read_parts(join_uri(work_dir, "refs", f"p{part:04d}"), _ref_schema())
    rows, pairs = merge_partition(table)
    del table
    out = pa.Table.from_pylist([{c: r[c] for c in PLAN_FIELDS} for r in rows], schema=plan_schema())
    _write_table(out_uri, out, ROW_GROUP_ROWS)
    return {"part": part, "rows": len(rows), "pairs": pairs}


def read_plan_slice(uri: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows [start, stop) of one plan partition file, reading only the row groups they span."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(uri, "rb") as fh:
        pf = pq.ParquetFile(fh)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        if not groups:
            return []
        table = pf.read_row_groups(groups)
    assert first is not None
    rows: list[dict[str, Any]] = table.slice(start - first, stop - start).to_pylist()
    return rows


def get_unwrapped(refs: Any) -> Any:
    """`ray.get`, re-raising a task's own exception (an input error naming its file) rather than
    Ray's wrapper, whose message carries the worker's traceback."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
