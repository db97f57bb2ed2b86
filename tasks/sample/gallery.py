"""Gallery pages of the sample site, planned per source: which image goes on which page, with what text.

Planning is separate from rendering so that site-wide noise (broken links) can be spread over
all pages before any is written.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tasks.sample.items import Item, seeded_order, slug, stable_unit
from tasks.sample.planted import Planted
from tasks.sample.site import Entry, PageSpec, Site

SECTION_TITLES = {
    "openclipart": "Clip art",
    "emoji": "Emoji",
    "tuxpaint": "Tux Paint stamps",
    "popular": "Popular images",
    "community": "Community uploads",
}


def paginate(
    base: str, title: str, lang: str, entries: Sequence[Entry], per_page: int
) -> list[PageSpec]:
    """Split entries over base/page-001.html, page-002.html ... linked by prev/next."""
    chunks = [list(entries[i : i + per_page]) for i in range(0, len(entries), per_page)]
    pages = [
        PageSpec(f"{base}/page-{n + 1:03d}.html", f"{title} ({n + 1}/{len(chunks)})", lang, chunk)
        for n, chunk in enumerate(chunks)
    ]
    for a, b in zip(pages, pages[1:], strict=False):
        a.next, b.prev = b.path, a.path
    return pages


def _alt(item: Item, lang: str) -> str:
    """The item's text in a language, falling back to English as real multilingual sites do."""
    return item.alts.get(lang) or item.alts.get("en", "")


def openclipart_pages(site: Site, items: list[Item], per_page: int) -> list[PageSpec]:
    """One gallery per top category; an image listed in two categories is served under both paths."""
    by_cat: dict[str, list[Entry]] = defaultdict(list)
    for it in items:
        for n, listed in enumerate((it.item_id, *it.aliases)):
            target = f"gallery/openclipart/images/{listed}.{it.ext}"
            site.copy(target, it.image)
            kind = "item" if n == 0 else "alias"
            entry = Entry(
                target, it.alts["en"], it.title, it.alts["en"], "openclipart", it.item_id, kind
            )
            by_cat[listed.split("/")[0] if "/" in listed else "unsorted"].append(entry)
    pages = []
    for cat in sorted(by_cat):
        entries = sorted(by_cat[cat], key=lambda e: e.target)
        title = f"Clip art: {cat.replace('_', ' ')}"
        pages += paginate(f"gallery/openclipart/{slug(cat)}", title, "en", entries, per_page)
    return pages


def emoji_pages(
    site: Site, items: list[Item], languages: Sequence[str], per_page: int
) -> list[PageSpec]:
    """Per language and emoji group, in CLDR order; the same image URL carries each language's name."""
    items = sorted(items, key=lambda it: it.rank)
    for it in items:
        site.copy(f"gallery/emoji/images/{it.item_id}.png", it.image)
    groups = list(dict.fromkeys(it.category for it in items))
    pages = []
    for lang in languages:
        for group in groups:
            entries = [
                Entry(
                    f"gallery/emoji/images/{it.item_id}.png",
                    _alt(it, lang),
                    it.title,
                    it.subcategory.replace("-", " "),
                    "emoji",
                    it.item_id,
                    lang=lang,
                )
                for it in items
                if it.category == group
            ]
            pages += paginate(
                f"gallery/emoji/{lang}/{slug(group)}", f"Emoji: {group}", lang, entries, per_page
            )
    return pages


def tuxpaint_pages(
    site: Site, items: list[Item], languages: Sequence[str], per_page: int
) -> list[PageSpec]:
    """Per language and stamp category, texts from the stamps' own translations."""
    items = sorted(items, key=lambda it: it.item_id)
    for it in items:
        site.copy(f"gallery/tuxpaint/stamps/{it.item_id}.{it.ext}", it.image)
    pages = []
    for lang in languages:
        for cat in sorted({it.category for it in items}):
            entries = [
                Entry(
                    f"gallery/tuxpaint/stamps/{it.item_id}.{it.ext}",
                    _alt(it, lang),
                    it.title,
                    it.subcategory.split("/")[-1],
                    "tuxpaint",
                    it.item_id,
                    lang=lang,
                )
                for it in items
                if it.category == cat
            ]
            pages += paginate(
                f"gallery/tuxpaint/{lang}/{slug(cat)}", f"Tux Paint: {cat}", lang, entries, per_page
            )
    return pages


def _media_target(prefix: str, path: str, ext: str) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"{prefix}/{digest}.{ext}"


def duplicate_pages(
    site: Site, items: list[Item], rate: float, seed: int, per_page: int
) -> list[PageSpec]:
    """Some images again under a content-addressed /media/ URL, as CDNs and re-posts do."""
    chosen = [
        it for it in sorted(items, key=lambda it: it.uid) if stable_unit(seed, "dup", it.uid) < rate
    ]
    entries = []
    for it in chosen:
        target = _media_target("media", it.image, it.ext)
        site.copy(target, it.image)
        entries.append(
            Entry(target, _alt(it, "en"), it.title, "", it.source, it.item_id, "duplicate")
        )
    return paginate("gallery/popular", "Popular images", "en", entries, per_page)


def planted_pages(site: Site, planted: list[Planted], per_page: int) -> list[PageSpec]:
    """Near-duplicates of eval images, posted like user uploads with the item's caption as alt."""
    entries = []
    for pl in planted:
        target = pl.site_path
        site.write_bytes(target, pl.data)
        entries.append(
            Entry(target, pl.alt, "", pl.alt, pl.source, pl.item_id, "planted", noisy=False)
        )
    return paginate("gallery/community", "Community uploads", "en", entries, per_page)


def private_pages(
    site: Site, items: list[Item], count: int, seed: int, section: str
) -> list[PageSpec]:
    """The section robots.txt disallows: a polite crawler never sees these copies."""
    by_uid = {it.uid: it for it in items}
    entries = []
    for uid in seeded_order(by_uid, seed, "private")[:count]:
        it = by_uid[uid]
        target = _media_target(f"{section}/images", it.image, it.ext)
        site.copy(target, it.image)
        entries.append(
            Entry(target, _alt(it, "en"), it.title, "", it.source, it.item_id, "private")
        )
    return (
        [PageSpec(f"{section}/index.html", "Drafts (not for robots)", "en", entries)]
        if entries
        else []
    )


def add_broken_links(pages: list[PageSpec], count: int, seed: int) -> int:
    """Spread `count` dead links (missing images and missing pages) over the gallery pages."""
    by_path = {p.path: p for p in pages}
    order = seeded_order(by_path, seed, "broken")
    for i in range(count):
        page = by_path[order[i % len(order)]] if order else None
        if page is None:
            return 0
        base = page.path.rsplit("/", 1)[0]
        if i % 2 == 0:
            target = f"{base}/images/missing-{i:03d}.png"
            page.entries.append(
                Entry(
                    target,
                    f"Missing picture {i}",
                    "",
                    "",
                    "broken",
                    f"missing-{i:03d}",
                    "broken",
                    noisy=False,
                )
            )
        else:
            page.broken_hrefs.append(f"{base}/missing-page-{i:03d}.html")
    return count if order else 0


def index_pages(
    gallery: list[PageSpec], gimp_pages: list[str], private: list[PageSpec]
) -> list[PageSpec]:
    """gallery/index.html per section, and the root index.html linking to every page."""
    sections: dict[str, list[PageSpec]] = defaultdict(list)
    for p in gallery:
        sections[p.path.split("/")[1]].append(p)
    gal_index = PageSpec("gallery/index.html", "Galleries", "en")
    for name in sorted(sections):
        gal_index.links.append((sections[name][0].path, SECTION_TITLES.get(name, name)))
    root = PageSpec("index.html", "clipmill sample web", "en")
    root.links.append(("gimp/index.html", "GIMP User Manual"))
    root.links.append((gal_index.path, gal_index.title))
    root.links += [(p.path, p.title) for p in gallery]
    root.links += [(p, f"GIMP manual: {p.removeprefix('gimp/')}") for p in gimp_pages]
    root.links += [(p.path, p.title) for p in private]
    return [gal_index, root]
