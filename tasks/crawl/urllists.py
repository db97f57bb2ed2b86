"""URL lists (parquet / csv / tsv / jsonl / txt) with img2dataset's column conventions."""

from __future__ import annotations

from typing import Any

from tasks.crawl.errors import CrawlError
from tasks.crawl.language import detect_language
from tasks.crawl.records import ImageRef, clean_text
from tasks.crawl.urlscreen import DEFAULT_RULES, UrlRules, redact, screen, strip_userinfo


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


def read_url_list(
    uri: str, url_col: str = "url", caption_col: str = "caption", rules: UrlRules = DEFAULT_RULES
) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """Refs of one URL list, and a row (with its reason) for each row refused before fetching:
    empty, malformed, relative, non-http(s) scheme, too long, or carrying credentials when
    `rules` refuse them (else they are stripped)."""
    frame = _read_frame(uri)
    if url_col not in frame.columns and not (uri.lower().endswith(".txt") and url_col == "url"):
        raise UrlListError(
            f"{uri}: no column {url_col!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    has_caption = bool(caption_col) and caption_col in frame.columns
    refs: list[ImageRef] = []
    refused: list[dict[str, Any]] = []
    captions = frame[caption_col].tolist() if has_caption else [None] * len(frame)
    for number, (raw_url, caption) in enumerate(
        zip(frame[url_col].tolist(), captions, strict=True)
    ):
        try:
            url = screen(raw_url, rules)
        except CrawlError as exc:
            refused.append(refused_row("urls", uri, number, raw_url, exc))
            continue
        text = clean_text(caption if isinstance(caption, str) else None)
        refs.append(ImageRef(url, [text] if text else [], "", detect_language(text), "urls"))
    return refs, refused
