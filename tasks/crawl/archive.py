"""Shared reading of WARC-format files (WARC and WAT): fsspec open, record loop, garbage accounting."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tasks.crawl.records import ImageRef


@dataclass
class ExtractResult:
    """Image refs from one archive file plus what was read and what was wrong with it."""

    uri: str
    refs: list[ImageRef] = field(default_factory=list)
    records: int = 0  # WARC records read
    pages: int = 0  # records that were HTML pages
    errors: Counter[str] = field(default_factory=Counter)  # error class -> count
    error_details: list[str] = field(default_factory=list)  # first few messages, naming the file

    def note(self, error_class: str, detail: str) -> None:
        self.errors[error_class] += 1
        if len(self.error_details) < 20:
            self.error_details.append(f"{self.uri}: {error_class}: {detail}")


def iter_records(uri: str, result: ExtractResult) -> Iterator[Any]:
    """Yield warcio records; a truncated gzip or a broken record ends the file with a counted error.

    A bad length or a cut-off gzip member leaves the stream at an unknown position, so the
    records already yielded are kept and the rest of the file is reported, not guessed at.
    """
    import fsspec
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    try:
        fh = fsspec.open(uri, "rb").open()
    except (OSError, ValueError) as exc:
        result.note("unreadable_file", f"{type(exc).__name__}: {exc}")
        return
    with fh:
        try:
            for record in ArchiveIterator(fh, check_digests=False):
                result.records += 1
                if getattr(record, "format", "warc") != "warc":  # warcio reads junk lines as ARC
                    result.note(
                        "bad_record",
                        f"record {result.records}: not a WARC record ({record.format})",
                    )
                    return
                yield record
        except (EOFError, zlib.error) as exc:
            result.note("bad_gzip", f"after {result.records} records: {type(exc).__name__}: {exc}")
        except ArchiveLoadFailed as exc:
            result.note("bad_record", f"after {result.records} records: {str(exc).splitlines()[0]}")
        except (ValueError, OSError) as exc:
            result.note(
                "bad_record", f"after {result.records} records: {type(exc).__name__}: {exc}"
            )


def _missing_bytes(record: Any) -> int:
    """Drain the record; bytes its Content-Length declared that the stream no longer had."""
    from warcio.limitreader import LimitReader

    raw = record.raw_stream
    while raw.read(1 << 16):
        pass
    return raw.limit if isinstance(raw, LimitReader) else 0


def run_extractor(uri: str, per_record: Callable[[Any, ExtractResult], None]) -> ExtractResult:
    """Apply `per_record` to every record of `uri`; an exception in one record never loses the others.

    warcio hands out a cut-off last record without complaint, so every record's declared length
    is checked after reading: a shortfall (truncated file, or a record with a wrong length) is
    counted as `truncated_record` and ends the file.
    """
    result = ExtractResult(uri=uri)
    for record in iter_records(uri, result):
        try:
            per_record(record, result)
            missing = _missing_bytes(record)
        except (EOFError, zlib.error) as exc:
            result.note("bad_gzip", f"record {result.records}: {type(exc).__name__}: {exc}")
            break
        except Exception as exc:  # one broken record must not lose the file
            result.note("bad_record", f"record {result.records}: {type(exc).__name__}: {exc}")
            continue
        if missing:
            result.note(
                "truncated_record", f"record {result.records}: {missing} declared bytes missing"
            )
            break
    return result
