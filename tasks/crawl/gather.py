"""Collect image refs from the configured sources (WAT/WARC files as Ray tasks, site crawl, URL lists)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.crawl.archive import ExtractResult
from tasks.crawl.records import ImageRef
from tasks.io.paths import is_uri, resolve_uri


@dataclass
class Gathered:
    """All refs found, and per-source counts for the metrics."""

    refs: list[ImageRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # inputs refused before fetching


def _index_entry(entry: str, folder: Path) -> str:
    """An archive listed in index.json: beside the index when it is there (the sample stage
    lists them relative to it), else by the one params-path rule (tasks.io.paths)."""
    if not is_uri(entry) and (folder / entry).exists():
        return str(folder / entry)
    return resolve_uri(entry)


def archive_index(path: str) -> dict[str, Any]:
    """archives/index.json: {"base_url": ..., "warc": [...], "wat": [...]}, paths resolved."""
    p = Path(resolve_uri(path))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"archives index not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON: {exc}") from None
    for kind in ("warc", "wat"):
        data[kind] = [_index_entry(str(e), p.parent) for e in data.get(kind) or []]
    return data


class ArchiveFileError(FileNotFoundError):
    """A configured WAT/WARC file is missing, unreadable, or holds no readable record at all."""


def _refuse_unusable(kind: str, results: list[ExtractResult]) -> None:
    """A file the crawl was told to read and could not use at all is an error naming the file,
    not a warning beside a successful crawl. A file that breaks part-way (truncated gzip, a bad
    record) keeps what was read before; its errors are counted and logged."""
    bad = [
        f"{r.uri} ({r.error_details[0].split(': ', 1)[-1] if r.error_details else 'no record'})"
        for r in results
        if r.errors.get("unreadable_file") or (r.records <= 1 and r.errors and not r.refs)
    ]
    if bad:
        raise ArchiveFileError(
            f"inputs: {len(bad)} {kind.upper()} file(s) unusable: {'; '.join(bad[:5])}"
        )


def extract_files(kind: str, files: list[str]) -> Gathered:
    """One Ray task per WAT/WARC file; results in file order so the refs are deterministic."""
    import ray

    from tasks.crawl.extract_warc import extract_warc
    from tasks.crawl.extract_wat import extract_wat

    fn: Callable[[str], ExtractResult] = {"wat": extract_wat, "warc": extract_warc}[kind]
    remote = ray.remote(num_cpus=1)(fn)
    started = time.perf_counter()
    results: list[ExtractResult] = ray.get([remote.remote(f) for f in files])
    _refuse_unusable(kind, results)
    out = Gathered()
    for res in results:
        out.refs.extend(res.refs)
        out.errors.update({f"{kind}_{k}": v for k, v in res.errors.items()})
        out.details.extend(res.error_details)
    out.metrics = {
        f"{kind}_files": len(files),
        f"{kind}_records": sum(r.records for r in results),
        f"{kind}_pages": sum(r.pages for r in results),
        f"{kind}_image_refs": sum(len(r.refs) for r in results),
        f"{kind}_seconds": round(time.perf_counter() - started, 3),
    }
    return out
