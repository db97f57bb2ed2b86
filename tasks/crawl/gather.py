"""Collect image refs from the configured sources into the plan partitions.

WAT / WARC files and URL lists run as one Ray task per file (`extract_to_parts`), each writing
its screened refs to the uid partitions of `tasks.crawl.planparts` and returning counts only;
the site crawl (bounded by site.max_pages) runs in the driver and writes its refs the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.crawl.archive import ExtractResult
from tasks.crawl.errors import CrawlError
from tasks.crawl.planparts import PartWriter, get_unwrapped
from tasks.crawl.records import ImageRef
from tasks.crawl.urlscreen import UrlRules, screen, strip_userinfo
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


@dataclass(frozen=True)
class ExtractSpec:
    """What one extraction task reads and where it writes (small: it travels to the worker)."""

    kind: str  # wat | warc | urls | site (the site crawl runs in the driver)
    uri: str  # the input file
    index: int  # its position among all inputs: the first half of every ref's sequence key
    work_dir: str  # _plan/work of the output
    partitions: int  # inputs.plan_partitions
    rules: UrlRules  # policy's URL screening rules
    url_col: str = "url"  # URL lists: inputs.url_col
    caption_col: str = "caption"  # URL lists: inputs.caption_col
    extra_cols: tuple[str, ...] = ()  # URL lists: inputs.save_additional_columns
    task: int = -1  # unique id of this task (names its part files; -1 = `index`)
    row_groups: tuple[int, int] | None = None  # parquet URL lists: row groups [a, b) of this task
    first_row: int = 0  # parquet URL lists: the file's row number of this task's first row


def unusable_reason(res: ExtractResult) -> str | None:
    """Why a WAT/WARC file the crawl was told to read could not be used at all (None if usable).

    A file that breaks part-way (truncated gzip, a bad record) keeps what was read before; its
    errors are counted and logged."""
    if res.errors.get("unreadable_file") or (res.records <= 1 and res.errors and not res.refs):
        detail = res.error_details[0].split(": ", 1)[-1] if res.error_details else "no record"
        return f"{res.uri} ({detail})"
    return None


def screen_refs(
    refs: Iterable[ImageRef], rules: UrlRules
) -> Iterator[tuple[ImageRef | None, dict[str, Any] | None]]:
    """Every ref's URL screened (credentials stripped or refused, scheme, length) and its page
    URL cleared of credentials: what is planned is what may be fetched and stored."""
    from tasks.crawl.urllists import refused_row

    for ref in refs:
        try:
            url = screen(ref.url, rules)
        except CrawlError as exc:
            yield None, refused_row(ref.source, ref.page_url, -1, ref.url, exc)
            continue
        page = strip_userinfo(ref.page_url)
        if url != ref.url or page != ref.page_url:
            ref = ImageRef(url, ref.texts, page, ref.language, ref.source, ref.extra)
        yield ref, None


def write_refs(writer: PartWriter, index: int, refs: Iterable[ImageRef], rules: UrlRules) -> int:
    """Screen `refs` and append them to the partitions with sequence keys (index, 0..); the
    refused ones to the refused parts. Returns how many refs were seen."""
    n = 0
    for n, (ref, refused) in enumerate(screen_refs(refs, rules), 1):
        if ref is not None:
            writer.add(ref, index, n - 1)
        else:
            assert refused is not None
            writer.refuse([refused])
    return n


def extract_to_parts(spec: ExtractSpec) -> dict[str, Any]:
    """One input file -> its refs in the plan partitions; only counts go back to the driver.

    Runs as one Ray task per file. A WAT/WARC file is extracted whole by its extractor (one
    file's refs, bounded by the file); a URL list is read chunk by chunk."""
    from tasks.io.nodefetch import ensure_local

    # a local input under the bucket data root's cache: on another node of a cluster that folder
    # is this node's own and empty until fetched (a no-op everywhere else)
    if "://" not in spec.uri:
        ensure_local(spec.uri)
    task = spec.task if spec.task >= 0 else spec.index
    writer = PartWriter(spec.work_dir, task, spec.partitions)
    out: dict[str, Any] = {"kind": spec.kind, "index": spec.index, "task": task, "uri": spec.uri}
    if spec.kind == "urls":
        from tasks.crawl.urllists import iter_url_refs

        rows = skipped = kept = 0
        for refs, refused in iter_url_refs(
            spec.uri,
            spec.url_col,
            spec.caption_col,
            spec.rules,
            spec.extra_cols,
            row_groups=spec.row_groups,
            first_row=spec.first_row,
        ):
            writer.refuse(refused)
            for ref in refs:  # already screened by the reader; the tasks of one file, in order
                writer.add(ref, spec.index, spec.first_row + kept)
                kept += 1
            rows += len(refs) + len(refused)
            skipped += len(refused)
        out.update(rows=rows, skipped=skipped, refs=kept)
    else:
        from tasks.crawl.extract_warc import extract_warc
        from tasks.crawl.extract_wat import extract_wat

        # WAT refs leave their language to the plan's reduce: once per distinct text there
        # (tasks.crawl.language.fill_languages), not once per distinct text of every file
        fn: Callable[[str], ExtractResult] = {
            "wat": lambda uri: extract_wat(uri, languages=False),
            "warc": extract_warc,
        }[spec.kind]
        res = fn(spec.uri)
        out.update(
            records=res.records,
            pages=res.pages,
            refs=len(res.refs),
            errors=dict(res.errors),
            details=res.error_details[:20],
            unusable=unusable_reason(res),
        )
        write_refs(writer, spec.index, res.refs, spec.rules)
    writer.flush()
    out.update(written=writer.written, refused=writer.refused_count, part_files=writer.files)
    return out


def run_extract_tasks(specs: list[ExtractSpec]) -> list[dict[str, Any]]:
    """One Ray task per input file (or row-group range of a big parquet list); summaries in
    input order (refs never reach the driver)."""
    import ray

    remote = ray.remote(num_cpus=1)(extract_to_parts)
    pending = [remote.remote(s) for s in specs]
    done: list[dict[str, Any]] = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(len(pending), 64), timeout=None)
        done.extend(get_unwrapped(ready))
    return sorted(done, key=lambda s: s["task"])
