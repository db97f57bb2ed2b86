"""URL lists (parquet / csv / tsv / jsonl / txt) with img2dataset's column conventions."""

from __future__ import annotations

from typing import Any

from tasks.crawl.htmlimg import absolute_url
from tasks.crawl.language import detect_language
from tasks.crawl.records import ImageRef, clean_text


class UrlListError(ValueError):
    """A URL list cannot be read or lacks the URL column; the message names the file."""


def _read_frame(uri: str) -> Any:
    import pandas as pd

    name = uri.lower().removesuffix(".gz")
    readers = {
        ".parquet": lambda: pd.read_parquet(uri),
        ".csv": lambda: pd.read_csv(uri, dtype=str, keep_default_na=False),
        ".tsv": lambda: pd.read_csv(uri, sep="\t", dtype=str, keep_default_na=False),
        ".jsonl": lambda: pd.read_json(uri, lines=True, dtype=False),
        ".json": lambda: pd.read_json(uri, dtype=False),
        ".txt": lambda: pd.read_csv(
            uri, header=None, names=["url"], dtype=str, keep_default_na=False
        ),
    }
    for suffix, reader in readers.items():
        if name.endswith(suffix):
            try:
                return reader()
            except Exception as exc:
                raise UrlListError(
                    f"{uri}: cannot read as {suffix[1:]}: {type(exc).__name__}: {exc}"
                ) from None
    raise UrlListError(f"{uri}: unknown URL list format (use {', '.join(readers)})")


def read_url_list(
    uri: str, url_col: str = "url", caption_col: str = "caption"
) -> tuple[list[ImageRef], int]:
    """Refs of one URL list and the number of rows skipped for a missing or non-http URL."""
    frame = _read_frame(uri)
    if url_col not in frame.columns and not (uri.lower().endswith(".txt") and url_col == "url"):
        raise UrlListError(
            f"{uri}: no column {url_col!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    has_caption = bool(caption_col) and caption_col in frame.columns
    refs: list[ImageRef] = []
    skipped = 0
    captions = frame[caption_col].tolist() if has_caption else [None] * len(frame)
    for raw_url, caption in zip(frame[url_col].tolist(), captions, strict=True):
        url = absolute_url(str(raw_url), "") if isinstance(raw_url, str) else None
        if not url:
            skipped += 1
            continue
        text = clean_text(caption if isinstance(caption, str) else None)
        refs.append(ImageRef(url, [text] if text else [], "", detect_language(text), "urls"))
    return refs, skipped
