"""URL lists (parquet / csv / tsv / json / jsonl / txt, each optionally .gz) with img2dataset's
column conventions, read in chunks so that a list of any size never sits in memory whole.

Readers per format (all through fsspec, gzip inferred from a `.gz` suffix):
- parquet: `pyarrow.parquet.ParquetFile.iter_batches` (only the needed columns are read; a
  `.parquet.gz`, which cannot be read without seeking, is first unpacked to a temporary file);
- csv / tsv: `pyarrow.csv.open_csv`, a streaming reader (every column read as a string, empty
  cells stay "" as img2dataset / pandas with keep_default_na=False read them);
- jsonl: lines in chunks, one JSON object per line;
- txt: lines in chunks, one URL per line (blank lines skipped);
- json: one JSON array of objects. A JSON array cannot be streamed without a streaming JSON
  parser, so a `.json` file IS read whole; use jsonl (or parquet) for big lists.
Row numbers (`refused.parquet`'s `row`) count data rows from 0 across chunks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from tasks.crawl.errors import CrawlError
from tasks.crawl.language import detect_language
from tasks.crawl.records import ImageRef, clean_text
from tasks.crawl.urlscreen import DEFAULT_RULES, UrlRules, redact, screen, strip_userinfo

CHUNK_ROWS = 65_536  # rows per chunk: bounds a reader's memory whatever the list's size
FORMATS = (".parquet", ".csv", ".tsv", ".jsonl", ".json", ".txt")


class UrlListError(ValueError):
    """A URL list cannot be read or lacks the URL column; the message names the file."""


Chunk = dict[str, list[Any]]  # column name -> values of one chunk


def list_format(uri: str) -> str:
    """The format of a URL list from its name (`.gz` removed), or UrlListError naming it."""
    name = uri.lower().removesuffix(".gz")
    for suffix in FORMATS:
        if name.endswith(suffix):
            return suffix[1:]
    raise UrlListError(f"{uri}: unknown URL list format (use {', '.join(FORMATS)}, optionally .gz)")


def _open(uri: str, mode: str = "rb") -> Any:
    import fsspec

    compression = "gzip" if uri.lower().endswith(".gz") else None
    if "t" in mode:
        return fsspec.open(uri, mode, compression=compression, encoding="utf-8")
    return fsspec.open(uri, mode, compression=compression)


def _parquet_chunks(
    uri: str, columns: list[str], chunk_rows: int, row_groups: tuple[int, int] | None = None
) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    with _open(uri) as src, tempfile.TemporaryFile() as tmp:
        fh = src
        if uri.lower().endswith(".gz"):  # parquet needs seeks: a gzipped one is unpacked to disk
            shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.seek(0)
            fh = tmp
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        _require(uri, columns, names)
        groups = list(range(*row_groups)) if row_groups else None
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns, row_groups=groups):
            yield {c: batch.column(c).to_pylist() for c in columns}


def _csv_chunks(uri: str, columns: list[str], chunk_rows: int, delimiter: str) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    read = pcsv.ReadOptions(block_size=1 << 22)
    with _open(uri) as fh:  # the header only: the names every column is then read by
        names = pcsv.open_csv(fh, read_options=read, parse_options=parse).schema.names
    _require(uri, columns, names)
    # Every column a string and empty cells "" (not null): types inferred from a first block
    # would break on a later block that does not fit them.
    convert = pcsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        include_columns=columns,
    )
    with _open(uri) as fh:
        reader = pcsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                yield {c: part.column(c).to_pylist() for c in columns}


def _line_chunks(uri: str, chunk_rows: int) -> Iterator[list[str]]:
    with _open(uri, "rt") as fh:
        lines: list[str] = []
        for line in fh:
            line = line.strip()
            if not line:
                continue
            lines.append(line)
            if len(lines) >= chunk_rows:
                yield lines
                lines = []
        if lines:
            yield lines


def _jsonl_chunks(uri: str, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    checked = False
    for lines in _line_chunks(uri, chunk_rows):
        docs = []
        for line in lines:
            doc = json.loads(line)
            if not isinstance(doc, dict):
                raise ValueError(f"a line holds {type(doc).__name__}, not an object")
            docs.append(doc)
        if not checked:
            _require(uri, columns, list(docs[0]))
            checked = True
        yield {c: [d.get(c) for d in docs] for c in columns}


def _json_chunks(uri: str, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    with _open(uri, "rt") as fh:
        docs = json.load(fh)  # read whole: see the module docstring
    if isinstance(docs, dict):  # pandas' column orientation {"url": {"0": ...}, ...}
        docs = [
            dict(zip(docs, vals, strict=True))
            for vals in zip(*(v.values() for v in docs.values()), strict=True)
        ]
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise ValueError("expected a JSON array of objects")
    if docs:
        _require(uri, columns, list(docs[0]))
    for start in range(0, len(docs), chunk_rows):
        part = docs[start : start + chunk_rows]
        yield {c: [d.get(c) for d in part] for c in columns}


def _require(uri: str, columns: list[str], names: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise UrlListError(
            f"{uri}: no column {missing[0]!r} (columns: {', '.join(map(str, names))})"
        )


def iter_chunks(
    uri: str,
    columns: list[str],
    chunk_rows: int = CHUNK_ROWS,
    row_groups: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """The `columns` of a URL list, chunk by chunk; UrlListError naming the file when it cannot
    be read or lacks a column (a txt list has the one column `url`). `row_groups` = [a, b)
    reads only those row groups of a parquet list (one extraction task's range)."""
    fmt = list_format(uri)
    try:
        if fmt == "txt":
            if [c for c in columns if c != "url"]:
                _require(uri, columns, ["url"])
            for lines in _line_chunks(uri, chunk_rows):
                yield {"url": lines}
        elif fmt == "parquet":
            yield from _parquet_chunks(uri, columns, chunk_rows, row_groups)
        elif fmt in ("csv", "tsv"):
            yield from _csv_chunks(uri, columns, chunk_rows, "," if fmt == "csv" else "\t")
        elif fmt == "jsonl":
            yield from _jsonl_chunks(uri, columns, chunk_rows)
        else:
            yield from _json_chunks(uri, columns, chunk_rows)
    except UrlListError:
        raise
    except Exception as exc:
        raise UrlListError(f"{uri}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from None


def refused_row(source: str, where: str, row: int, url: object, exc: CrawlError) -> dict[str, Any]:
    """One input refused before fetching, as `refused.parquet` keeps it (URL redacted)."""
    return {
        "source": source,
        "input": redact(where, 2000),
        "row": row,
        "url": redact(url if isinstance(url, str) else "", 2000),
        "status": exc.error_class,
        "error_message": strip_userinfo(exc.detail)[:500],
    }


def _json_value(value: Any) -> str | int | float | bool | None:
    """A cell as `extra` keeps it: strings, numbers and null as they are, anything else as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def iter_url_refs(
    uri: str,
    url_col: str = "url",
    caption_col: str = "caption",
    rules: UrlRules = DEFAULT_RULES,
    extra_cols: tuple[str, ...] = (),
    chunk_rows: int = CHUNK_ROWS,
    row_groups: tuple[int, int] | None = None,
    first_row: int = 0,
) -> Iterator[tuple[list[ImageRef], list[dict[str, Any]]]]:
    """(refs, refused rows) of one URL list, chunk by chunk.

    A row is refused before fetching (with its reason) when its URL is empty, malformed,
    relative, of a non-http(s) scheme, too long, or carries credentials that `rules` refuse
    (else they are stripped). `extra_cols` (inputs.save_additional_columns) are kept per ref as
    a JSON object string in `ImageRef.extra`.
    """
    fmt = list_format(uri)
    columns = [url_col if fmt != "txt" else "url"]
    has_caption = bool(caption_col) and fmt != "txt"
    if has_caption and caption_col not in columns:
        columns.append(caption_col)
    for col in extra_cols:
        if col not in columns:
            columns.append(col)
    number = first_row  # `row` of refused rows: the row number in the file
    for chunk in _lenient_caption(
        uri, columns, caption_col if has_caption else "", chunk_rows, row_groups
    ):
        refs: list[ImageRef] = []
        refused: list[dict[str, Any]] = []
        urls = chunk[columns[0]]
        captions = chunk.get(caption_col) if has_caption else None
        for i, raw_url in enumerate(urls):
            row = number + i
            try:
                url = screen(raw_url, rules)
            except CrawlError as exc:
                refused.append(refused_row("urls", uri, row, raw_url, exc))
                continue
            caption = captions[i] if captions is not None else None
            text = clean_text(caption if isinstance(caption, str) else None)
            extra = (
                json.dumps({c: _json_value(chunk[c][i]) for c in extra_cols}) if extra_cols else ""
            )
            refs.append(
                ImageRef(url, [text] if text else [], "", detect_language(text), "urls", extra)
            )
        number += len(urls)
        yield refs, refused


def _lenient_caption(
    uri: str,
    columns: list[str],
    caption_col: str,
    chunk_rows: int,
    row_groups: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """Chunks of `columns`; a list without the caption column is read without it (captions are
    optional, as in img2dataset), every other missing column is an error naming the file."""
    try:
        first = True
        for chunk in iter_chunks(uri, columns, chunk_rows, row_groups):
            first = False
            yield chunk
    except UrlListError as exc:
        if not (first and caption_col and f"no column {caption_col!r}" in str(exc)):
            raise
        yield from iter_chunks(
            uri, [c for c in columns if c != caption_col], chunk_rows, row_groups
        )


def read_url_list(
    uri: str,
    url_col: str = "url",
    caption_col: str = "caption",
    rules: UrlRules = DEFAULT_RULES,
    extra_cols: tuple[str, ...] = (),
) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """Every ref of one URL list and its refused rows, in memory: for small lists and tests;
    the stage streams the chunks of `iter_url_refs` to plan partitions instead."""
    refs: list[ImageRef] = []
    refused: list[dict[str, Any]] = []
    for chunk_refs, chunk_refused in iter_url_refs(uri, url_col, caption_col, rules, extra_cols):
        refs.extend(chunk_refs)
        refused.extend(chunk_refused)
    return refs, refused


def parquet_ranges(uri: str, task_rows: int) -> list[tuple[tuple[int, int], int]] | None:
    """Row-group ranges of a plain (not gzipped) parquet list of more than `task_rows` rows,
    each with its first row number: one extraction task each. None: the file is one task."""
    import fsspec
    import pyarrow.parquet as pq

    if list_format(uri) != "parquet" or uri.lower().endswith(".gz"):
        return None
    try:
        with fsspec.open(uri, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
    except Exception as exc:
        raise UrlListError(f"{uri}: cannot read as parquet: {type(exc).__name__}: {exc}") from None
    if meta.num_rows <= task_rows:
        return None
    ranges: list[tuple[tuple[int, int], int]] = []
    start_group, first, rows = 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows - first >= task_rows or g == meta.num_row_groups - 1:
            ranges.append(((start_group, g + 1), first))
            start_group, first = g + 1, rows
    return ranges
