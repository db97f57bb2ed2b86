"""Turn the configured sources into image refs in the plan partitions (with extraction metrics)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from tasks.crawl.context import CrawlContext
from tasks.crawl.gather import (
    ArchiveFileError,
    ExtractSpec,
    Gathered,
    run_extract_tasks,
    write_refs,
)
from tasks.crawl.params import CrawlParams
from tasks.crawl.pathlists import iter_path_list
from tasks.crawl.planparts import PartWriter
from tasks.crawl.security import rules_of
from tasks.crawl.urllists import list_format, parquet_ranges
from tasks.io.paths import is_uri, resolve_uri

TASK_ROWS = 2_000_000  # rows of a parquet URL list one extraction task reads (row-group ranges)


class InputError(ValueError):
    """A requested source has nothing to read; the message says which param to set."""


def _archive_files(kind: str, p: CrawlParams, ctx: CrawlContext) -> list[str]:
    listed = list((ctx.archives or {}).get(kind) or [])
    extra = [resolve_uri(f) for f in (p.inputs.wat_files if kind == "wat" else p.inputs.warc_files)]
    path_lists = p.inputs.wat_path_lists if kind == "wat" else p.inputs.warc_path_lists
    prefix = p.inputs.archive_prefix
    if prefix and not is_uri(prefix):
        prefix = resolve_uri(prefix)  # a local mirror, relative to the project like any params path
    listed_by_paths = [
        path
        for path_list in path_lists
        for path in iter_path_list(resolve_uri(path_list), prefix, p.inputs.max_archive_files)
    ]
    files = list(dict.fromkeys(listed + extra + listed_by_paths))
    if not files:
        raise InputError(
            f"inputs.sources includes {kind!r} but there are no {kind.upper()} files: "
            f"inputs.archives_index {p.inputs.archives_index!r} lists none (or is missing) and "
            f"inputs.{kind}_files and inputs.{kind}_path_lists are empty"
        )
    return files


def _site(p: CrawlParams, ctx: CrawlContext) -> Gathered:
    from tasks.crawl.security import UrlGuard
    from tasks.crawl.sitecrawl import crawl_site

    seeds = [ctx.to_fetch(s) for s in p.site.seeds] or (
        [ctx.served_base + "index.html"] if ctx.served_base else []
    )
    if not seeds:
        raise InputError(
            "inputs.sources includes 'site' but site.seeds is empty and no sample site is served "
            "(inputs.sample_site_dir)"
        )
    hosts = tuple(urlsplit(ctx.to_fetch(f"http://{h}/")).netloc for h in p.site.allowed_hosts)
    res = crawl_site(
        p.site,
        tuple(seeds),
        hosts,
        p.policy,
        p.http,
        UrlGuard(ctx.allow_addresses, rules=rules_of(p.policy)),
        ctx.to_canonical,
    )
    out = Gathered(refs=res.refs, details=res.details)
    out.errors.update({f"site_{k}": v for k, v in res.errors.items()})
    out.metrics = {
        "site_pages": res.pages,
        "site_fetched": res.fetched,
        "site_image_refs": len(res.refs),
        "site_seconds": res.seconds,
    }
    return out


def _specs(p: CrawlParams, ctx: CrawlContext, work_dir: str) -> list[tuple[str, ExtractSpec]]:
    """The extraction tasks of every source's inputs, in input order (the site crawl is one
    input, run in the driver). An input's number is the first half of its refs' sequence key."""
    inputs = p.inputs
    rules = rules_of(p.policy)
    out: list[tuple[str, ExtractSpec]] = []
    index = 0  # the input's number; `len(out)` is the task's

    def spec(
        kind: str, uri: str, groups: tuple[int, int] | None = None, first: int = 0
    ) -> ExtractSpec:
        return ExtractSpec(
            kind,
            uri,
            index,
            work_dir,
            inputs.plan_partitions,
            rules,
            inputs.url_col,
            inputs.caption_col,
            tuple(inputs.save_additional_columns),
            task=len(out),
            row_groups=groups,
            first_row=first,
        )

    for source in dict.fromkeys(inputs.sources):
        if source in ("wat", "warc"):
            for f in _archive_files(source, p, ctx):
                out.append((source, spec(source, f)))
                index += 1
        elif source == "site":
            out.append(("site", spec("site", "")))
            index += 1
        else:
            if not inputs.url_lists:
                raise InputError("inputs.sources includes 'urls' but inputs.url_lists is empty")
            for entry in inputs.url_lists:
                uri = resolve_uri(entry)
                list_format(uri)  # an unknown format is an error before any task starts
                ranges: list[tuple[tuple[int, int] | None, int]] = [(None, 0)]
                ranges = list(parquet_ranges(uri, TASK_ROWS) or ranges)
                for groups, first in ranges:  # a huge parquet list: one task per range
                    out.append(("urls", spec("urls", uri, groups, first)))
                index += 1
    return out


def gather_to_parts(p: CrawlParams, ctx: CrawlContext, work_dir: str) -> Gathered:
    """Every source's refs written, screened, to the plan partitions under `work_dir`; the
    returned Gathered holds metrics, error counts and details only (no refs, no refused rows)."""
    specs = _specs(p, ctx, work_dir)
    total = Gathered()
    site = [s for kind, s in specs if kind == "site"]
    if site:  # in the driver (bounded by site.max_pages), written the same way
        part = _site(p, ctx)
        writer = PartWriter(work_dir, site[0].task, p.inputs.plan_partitions)
        write_refs(writer, site[0].index, part.refs, rules_of(p.policy))
        writer.flush()
        total.metrics.update(part.metrics)
        total.errors.update(part.errors)
        total.details.extend(part.details)
        total.metrics["refused_site"] = writer.refused_count
        total.metrics["plan_part_files"] = writer.files
    started = time.perf_counter()
    summaries = run_extract_tasks([s for kind, s in specs if kind != "site"])
    seconds = round(time.perf_counter() - started, 3)
    for kind in ("wat", "warc"):
        mine = [s for s in summaries if s["kind"] == kind]
        if not mine:
            continue
        bad = [s["unusable"] for s in mine if s["unusable"]]
        if bad:
            raise ArchiveFileError(
                f"inputs: {len(bad)} {kind.upper()} file(s) unusable: {'; '.join(bad[:5])}"
            )
        for s in mine:
            total.errors.update({f"{kind}_{k}": v for k, v in s["errors"].items()})
            if len(total.details) < 20:
                total.details.extend(s["details"])
        total.metrics.update(
            {
                f"{kind}_files": len(mine),
                f"{kind}_records": sum(s["records"] for s in mine),
                f"{kind}_pages": sum(s["pages"] for s in mine),
                f"{kind}_image_refs": sum(s["refs"] for s in mine),
                f"{kind}_seconds": seconds,
            }
        )
    lists = [s for s in summaries if s["kind"] == "urls"]
    if lists:
        total.metrics.update(
            {
                "urls_rows": sum(s["rows"] for s in lists),
                "urls_skipped": sum(s["skipped"] for s in lists),
            }
        )
    total.metrics["refused"] = total.metrics.pop("refused_site", 0) + sum(
        s["refused"] for s in summaries
    )
    total.metrics["extract_tasks"] = len(summaries)
    # part files the extraction wrote (byte-bounded buffers: tasks/crawl/planparts.py)
    total.metrics["plan_part_files"] = total.metrics.get("plan_part_files", 0) + sum(
        s["part_files"] for s in summaries
    )
    return total
