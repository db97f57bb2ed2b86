"""Turn the configured sources into one merged list of image refs (with extraction metrics)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tasks.crawl.context import CrawlContext, http_config
from tasks.crawl.gather import Gathered, extract_files, resolve_path
from tasks.crawl.params import CrawlParams
from tasks.crawl.records import merge_refs


class InputError(ValueError):
    """A requested source has nothing to read; the message says which param to set."""


def _archive_files(kind: str, p: CrawlParams, ctx: CrawlContext) -> list[str]:
    listed = list((ctx.archives or {}).get(kind) or [])
    extra = [resolve_path(f) for f in (p.wat_files if kind == "wat" else p.warc_files)]
    files = list(dict.fromkeys(listed + extra))
    if not files:
        raise InputError(
            f"sources includes {kind!r} but there are no {kind.upper()} files: archives_index "
            f"{p.archives_index!r} lists none (or is missing) and {kind}_files is empty"
        )
    return files


def _site(p: CrawlParams, ctx: CrawlContext) -> Gathered:
    from tasks.crawl.security import UrlGuard
    from tasks.crawl.sitecrawl import SiteCrawlConfig, crawl_site

    seeds = [ctx.to_fetch(s) for s in p.seeds] or (
        [ctx.served_base + "index.html"] if ctx.served_base else []
    )
    if not seeds:
        raise InputError(
            "sources includes 'site' but seeds is empty and no sample site is served (sample_site_dir)"
        )
    hosts = tuple(urlsplit(ctx.to_fetch(f"http://{h}/")).netloc for h in p.allowed_hosts)
    cfg = SiteCrawlConfig(
        seeds=tuple(seeds),
        allowed_hosts=hosts,
        max_depth=p.max_depth,
        max_pages=p.max_pages,
        politeness_delay_s=p.politeness_delay_s,
        concurrency=p.site_concurrency,
        respect_robots_txt=p.respect_robots_txt,
    )
    res = crawl_site(
        cfg,
        http_config(p, p.site_concurrency),
        UrlGuard(ctx.download.allow_addresses),
        ctx.to_canonical,
    )
    out = Gathered(refs=res.refs)
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

    if not p.url_lists:
        raise InputError("sources includes 'urls' but url_lists is empty")
    out = Gathered()
    skipped = 0
    for entry in p.url_lists:
        refs, bad = read_url_list(resolve_path(entry), p.url_col, p.caption_col)
        out.refs.extend(refs)
        skipped += bad
    out.metrics = {"urls_rows": len(out.refs) + skipped, "urls_skipped": skipped}
    return out


def gather_refs(p: CrawlParams, ctx: CrawlContext) -> Gathered:
    """All refs of all sources, merged per URL ((url, text) de-duplicated)."""
    total = Gathered()
    for source in dict.fromkeys(p.sources):
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
    pairs = len({(r.url, t) for r in total.refs for t in (r.texts or [""])})
    total.refs = merge_refs(total.refs)
    total.metrics.update({"unique_pairs": pairs, "unique_images": len(total.refs)})
    return total
