"""Turn the configured sources into one merged list of image refs (with extraction metrics)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tasks.crawl.context import CrawlContext
from tasks.crawl.errors import CrawlError
from tasks.crawl.gather import Gathered, extract_files
from tasks.crawl.params import CrawlParams
from tasks.crawl.pathlists import iter_path_list
from tasks.crawl.records import ImageRef, merge_refs
from tasks.crawl.security import rules_of
from tasks.crawl.urlscreen import UrlRules, screen, strip_userinfo
from tasks.io.paths import is_uri, resolve_uri


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


def _urls(p: CrawlParams) -> Gathered:
    from tasks.crawl.urllists import read_url_list

    inputs = p.inputs
    if not inputs.url_lists:
        raise InputError("inputs.sources includes 'urls' but inputs.url_lists is empty")
    out = Gathered()
    rules = rules_of(p.policy)
    for entry in inputs.url_lists:
        refs, refused = read_url_list(resolve_uri(entry), inputs.url_col, inputs.caption_col, rules)
        out.refs.extend(refs)
        out.refused.extend(refused)
    out.metrics = {
        "urls_rows": len(out.refs) + len(out.refused),
        "urls_skipped": len(out.refused),
    }
    return out


def _screen(refs: list[ImageRef], rules: UrlRules) -> tuple[list[ImageRef], list[dict[str, Any]]]:
    """Every ref's URL screened (credentials stripped or refused, scheme, length) and its page
    URL cleared of credentials: what is planned is what may be fetched and stored."""
    from tasks.crawl.urllists import refused_row

    kept: list[ImageRef] = []
    refused: list[dict[str, Any]] = []
    for ref in refs:
        try:
            url = screen(ref.url, rules)
        except CrawlError as exc:
            refused.append(refused_row(ref.source, ref.page_url, -1, ref.url, exc))
            continue
        page = strip_userinfo(ref.page_url)
        if url != ref.url or page != ref.page_url:
            ref = ImageRef(url, ref.texts, page, ref.language, ref.source)
        kept.append(ref)
    return kept, refused


def gather_refs(p: CrawlParams, ctx: CrawlContext) -> Gathered:
    """All refs of all sources, merged per URL ((url, text) de-duplicated)."""
    total = Gathered()
    for source in dict.fromkeys(p.inputs.sources):
        if source in ("wat", "warc"):
            part = extract_files(source, _archive_files(source, p, ctx))
        elif source == "site":
            part = _site(p, ctx)
        else:
            part = _urls(p)
        total.refs.extend(part.refs)
        total.metrics.update(part.metrics)
        total.errors.update(part.errors)
        total.details.extend(part.details)
        total.refused.extend(part.refused)
    total.refs, refused = _screen(total.refs, rules_of(p.policy))
    total.refused.extend(refused)
    total.metrics["refused"] = len(total.refused)
    for row in total.refused:
        key = f"refused_{row['status']}"
        total.metrics[key] = total.metrics.get(key, 0) + 1
    pairs = len({(r.url, t) for r in total.refs for t in (r.texts or [""])})
    total.refs = merge_refs(total.refs)
    total.metrics.update({"unique_pairs": pairs, "unique_images": len(total.refs)})
    return total
