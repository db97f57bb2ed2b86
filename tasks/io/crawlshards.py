"""Read crawl shards in any of img2dataset's layouts (the crawl's output.output_format):
`webdataset` (NNNNN.tar), `files` (a folder NNNNN/ of uid.<ext>, uid.txt, uid.json) and
`parquet` (NNNNN.parquet holding the image bytes in a column named by the image extension).

Why in the library: decontaminate and curate read the crawl's samples, and a stage never
imports another stage; the layouts themselves are a contract (docs/CONTRACTS.md, crawl).
Every layout yields the same thing: a `CrawlSample` (uid, image bytes, text, JSON metadata),
or, for code written against webdataset, `read_images`' (key, image, parts) triples with the
parts a tar would hold (`<ext>`, `txt`, `json`). Only samples with an image are yielded (a
failed download has none in any layout). Paths are local; under a bucket data root a shard
missing on this node is fetched into its cache first (tasks/io/nodefetch.py: tasks/io/wds.py
does so for tars, `layout_of` for a folder or parquet).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.io.wds import IMAGE_EXTS, image_ext, json_bytes, sample_json

LAYOUTS = ("webdataset", "files", "parquet")  # the crawl's output.output_format values
_NOT_META = ("seconds", "fetch_url")  # parquet columns the other layouts' .json leaves out


@dataclass(frozen=True)
class CrawlSample:
    """One crawled image: its uid (the sample key), bytes, caption and metadata (`.json`)."""

    uid: str
    image: bytes
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CrawlShard:
    """Where one shard's samples are and in which layout."""

    path: str
    layout: str


def _parquet_image_column(path: Path) -> str | None:
    """The image column of a parquet shard (binary, named by an image extension), from its
    footer only; None for the metadata parquet the webdataset and files layouts write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return next(
        (
            f.name
            for f in schema
            if f.name in IMAGE_EXTS
            and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))
        ),
        None,
    )


def layout_of(path: str | Path) -> str:
    """The layout of one shard path: a .tar, a folder, or a .parquet with an image column."""
    p = Path(path)
    if p.suffix == ".tar":
        return "webdataset"
    from tasks.io.nodefetch import ensure_local

    ensure_local(p)  # another node's cache folder: fetched from the bucket data root
    if p.is_dir():
        return "files"
    if p.suffix == ".parquet" and p.exists() and _parquet_image_column(p) is not None:
        return "parquet"
    raise ValueError(
        f"{path}: not a crawl shard in any layout ({', '.join(LAYOUTS)}): a .tar, a folder of "
        "samples, or a .parquet with an image column"
    )


def list_shards(folder: Path, who: str = "reader") -> list[CrawlShard]:
    """The shards of a crawl's `shards/` folder in name order, whatever their layout.

    A shard of the files layout without a single image has no folder, only its metadata
    parquet, which holds no samples: it is skipped. `who` (the stage) starts the error raised
    when the folder is missing or holds no shard, which names the folder."""
    shards: dict[str, CrawlShard] = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            stem = entry.name.split(".", 1)[0]
            if not stem.isdigit() or entry.name.startswith("."):
                continue
            if entry.suffix == ".tar":
                shards[stem] = CrawlShard(str(entry), "webdataset")
            elif entry.is_dir():
                shards[stem] = CrawlShard(str(entry), "files")
        for entry in sorted(folder.glob("*.parquet")):
            stem = entry.name.split(".", 1)[0]
            if stem.isdigit() and stem not in shards and _parquet_image_column(entry) is not None:
                shards[stem] = CrawlShard(str(entry), "parquet")
    if not shards:
        where = "does not exist" if not folder.exists() else "holds no crawl shards"
        raise FileNotFoundError(
            f"{who}: shards folder {folder} {where} (NNNNN.tar, NNNNN/ or NNNNN.parquet with "
            "images: run the crawl stage first)"
        )
    return [shards[k] for k in sorted(shards)]


def _files_parts(
    folder: Path, keys: Collection[str] | None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    by_key: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        key, _, ext = f.name.partition(".")
        if ext and not f.name.startswith(".") and (keys is None or key in keys):
            by_key.setdefault(key, {})[ext] = f
    for key, files in by_key.items():
        yield key, {ext: f.read_bytes() for ext, f in files.items()}


def _parquet_parts(
    path: Path, keys: Collection[str] | None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Row by row, a record batch at a time (a shard's images are never all in memory)."""
    import pyarrow.parquet as pq

    column = _parquet_image_column(path)
    if column is None:
        return
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            image = row.pop(column)
            uid = row.get("uid") or row.get("key")
            if image is None or uid is None or (keys is not None and uid not in keys):
                continue
            # the row's columns as the other layouts' .json: a null is a column the row lacks
            # (an extra input column of other rows; a success has every one of ours set)
            meta = {k: v for k, v in row.items() if k not in _NOT_META and v is not None}
            yield (
                uid,
                {
                    column: image,
                    "txt": (row.get("caption") or "").encode(),
                    "json": json_bytes(meta),
                },
            )


def iter_parts(
    path: str | Path, keys: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of one shard in any layout; only `keys` when given."""
    layout = layout_of(path)
    if layout == "webdataset":
        from tasks.io.wds import iter_samples

        yield from iter_samples(path, keys)
    elif layout == "files":
        yield from _files_parts(Path(path), keys)
    else:
        yield from _parquet_parts(Path(path), keys)


def read_images(
    path: str | Path, keys: Collection[str] | None = None
) -> Iterator[tuple[str, bytes, dict[str, bytes]]]:
    """tasks.io.wds.read_images for a shard in any layout: (key, image bytes, parts)."""
    for key, parts in iter_parts(path, keys):
        ext = image_ext(parts)
        if ext is not None:
            yield key, parts[ext], parts


def iter_samples(path: str | Path, keys: Collection[str] | None = None) -> Iterator[CrawlSample]:
    """The samples with an image of one shard in any layout (only `keys` when given)."""
    for key, image, parts in read_images(path, keys):
        text = parts.get("txt", b"").decode("utf-8", errors="replace")
        yield CrawlSample(key, image, text, sample_json(parts))


def sample_keys(shard: CrawlShard | str | Path) -> list[str]:
    """The keys of the samples with an image, in shard order, reading as little as the layout
    allows (tar headers, file names, the parquet's uid and image-validity only)."""
    path = shard.path if isinstance(shard, CrawlShard) else str(shard)
    layout = layout_of(path)
    if layout == "webdataset":
        from tasks.io.wds import sample_keys as tar_keys

        return tar_keys(path, IMAGE_EXTS)
    if layout == "files":
        names = sorted(f.name for f in Path(path).iterdir() if not f.name.startswith("."))
        keys = dict.fromkeys(
            n.partition(".")[0] for n in names if n.partition(".")[2] in IMAGE_EXTS
        )
        return list(keys)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = _parquet_image_column(Path(path))
    names = pq.read_schema(path).names
    # the status tells which rows hold an image (the crawl stores one for every success) without
    # reading the image bytes; a parquet without it is read by its image column
    if "status" in names:
        table = pq.read_table(path, columns=["uid", "status"])
        has_image = pc.equal(table.column("status"), "success")
    else:
        table = pq.read_table(path, columns=["uid", column])
        has_image = pc.is_valid(table.column(column))
    return [str(u) for u in table.column("uid").filter(has_image).to_pylist()]


def iter_crawl(folder: Path) -> Iterator[CrawlSample]:
    """Every sample with an image of a crawl's shards folder, shard after shard."""
    for shard in list_shards(folder):
        yield from iter_samples(shard.path)
