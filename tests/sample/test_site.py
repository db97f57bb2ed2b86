"""The website: real-site noise, robots.txt, broken links, an index linking to every page."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from tasks.sample.htmlmeta import html_metadata
from tasks.sample.site import resolve


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))


def test_site_has_the_noise_of_real_sites(small_sample):
    out, params, _ = small_sample
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    kinds = Counter(r["kind"] for r in rows)
    for kind in ("item", "alias", "nav", "duplicate", "planted", "private", "broken", "gimp"):
        assert kinds[kind] > 0, kind
    alts = [r["alt"] for r in rows if r["kind"] == "item"]
    assert "" in alts  # empty alt
    assert None in alts  # no alt attribute
    assert any(a and a.endswith(".png") for a in alts)  # the file name as alt
    srcs = [r["src"] for r in rows if r["kind"] == "item"]
    assert any(s.startswith(params.base_url) for s in srcs)  # fully qualified
    assert any(s.startswith("/") for s in srcs)  # root-relative
    assert any(s.startswith("../") for s in srcs)  # relative
    navs = {r["alt"] for r in rows if r["kind"] == "nav"}
    assert {"Previous", "Next", "clipmill sample web", ""} <= navs
    gimp_alts = {r["alt"] for r in rows if r["source"] == "gimp"}
    assert "Next" in gimp_alts  # the manual's own navigation images


def test_same_image_under_several_urls(small_sample):
    out, _, _ = small_sample
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    paths_of_item: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if r["kind"] in ("item", "alias", "duplicate", "private"):
            paths_of_item.setdefault((r["source"], r["item_id"]), set()).add(r["path"])
    assert sum(len(p) > 1 for p in paths_of_item.values()) >= 5
    # multilingual pairs: one image URL, an alt text per language
    alts: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["source"] == "tuxpaint" and r["kind"] == "item" and r["alt"]:
            alts.setdefault(r["path"], {})[r["lang"]] = r["alt"]
    assert max(len(set(a.values())) for a in alts.values()) >= 4


def test_rows_match_the_html(small_sample):
    """site_images.parquet is the truth about every <img> in the generated pages."""
    out, params, _ = small_sample
    site = out / "site"
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    by_page = Counter((r["page"], r["src"], r["alt"]) for r in rows)
    parsed = Counter()
    for page in _pages(site):
        meta = html_metadata((site / page).read_text(encoding="utf-8"))
        for link in meta.get("Links", []):
            if link["path"] == "IMG@/src":
                parsed[(page, link["url"], link.get("alt"))] += 1
    assert parsed == by_page


def test_robots_disallows_one_section(small_sample):
    out, params, _ = small_sample
    robots = (out / "site" / "robots.txt").read_text()
    assert f"Disallow: /{params.disallowed_section}/" in robots
    assert (out / "site" / params.disallowed_section / "index.html").is_file()


def test_broken_links_exist(small_sample):
    out, params, counts = small_sample
    site = out / "site"
    generated = [p for p in _pages(site) if not p.startswith("gimp/")]
    missing = set()
    for page in generated:
        for link in html_metadata((site / page).read_text(encoding="utf-8")).get("Links", []):
            target = resolve(page, link["url"], params.base_url)
            if target is not None and not (site / target).exists():
                missing.add((link["path"], target))
    assert len({target for _, target in missing}) == params.broken_links == counts["broken_links"]
    assert {"IMG@/src", "A@/href"} == {kind for kind, _ in missing}


def test_index_links_to_every_page(small_sample):
    out, params, _ = small_sample
    site = out / "site"
    meta = html_metadata((site / "index.html").read_text(encoding="utf-8"))
    linked = {resolve("index.html", link["url"], params.base_url) for link in meta["Links"]}
    assert set(_pages(site)) - {"index.html"} <= linked
