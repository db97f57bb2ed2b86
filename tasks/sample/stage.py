"""The `sample` stage: real Debian data -> a noisy sample web, its WARC/WAT, held-out eval sets, WordNet.

Everything is built in a temporary sibling of `out_dir` and renamed over it at the end, so a
failure leaves the previous output (or nothing) in place, never a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.io.paths import resolve_path
from tasks.sample import (
    archives,
    debian,
    emoji,
    fashion_mnist,
    gallery,
    gimp,
    heldout,
    openclipart,
    suite,
    tables,
    tuxpaint,
    wordnet,
)
from tasks.sample import planted as planting
from tasks.sample.heldout import SOURCES
from tasks.sample.items import Item
from tasks.sample.manifest import count_site, write_manifest
from tasks.sample.parallel import run_all
from tasks.sample.params import SampleParams
from tasks.sample.site import Site


def run(params: SampleParams) -> dict[str, Any]:
    """Build everything into a temp folder, publish it over out_dir, log it; return counts."""
    from tasks.settings import get_settings

    started = time.perf_counter()
    out = resolve_path(params.out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        roots = debian.ensure_packages(list(debian.PACKAGES), get_settings().cache_dir)
        counts = build(params, roots, tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts["build_seconds"] = round(time.perf_counter() - started, 1)
    _log(out, counts)
    return counts


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder in: two renames, the old output removed only afterwards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_sources(params: SampleParams, roots: dict[str, Path], work: Path) -> dict[str, Any]:
    """Read every package (in parallel as Ray tasks when Ray is up)."""
    return run_all(
        {
            "openclipart": (
                openclipart.load_openclipart,
                (
                    roots["openclipart-svg"],
                    roots["openclipart-png"],
                    params.openclipart_max_items,
                    params.seed,
                ),
            ),
            "emoji": (
                emoji.load_emoji,
                (
                    roots["unicode-data"],
                    roots["unicode-cldr-core"],
                    roots["fonts-noto-color-emoji"],
                    tuple(dict.fromkeys(("en", *params.languages))),
                    params.emoji_skin_tones,
                    work / "emoji",
                    params.emoji_max_items,
                    params.seed,
                ),
            ),
            "tuxpaint": (tuxpaint.load_tuxpaint, (roots["tuxpaint-stamps-default"],)),
            "fashion": (
                fashion_mnist.load_test_samples,
                (roots["dataset-fashion-mnist"], params.fashion_mnist_max_items),
            ),
            "fashion_train": (
                fashion_mnist.load_train_samples,
                (
                    roots["dataset-fashion-mnist"],
                    params.fashion_mnist_train_max_items,
                    params.seed,
                ),
            ),
            "wordnet": (wordnet.write_wordnet, (roots["wordnet-base"], work / "wordnet.parquet")),
        },
        label="sample: reading packages",
    )


def build_site(
    params: SampleParams,
    roots: dict[str, Path],
    on_site: dict[str, list[Item]],
    planted: list[planting.Planted],
    root: Path,
) -> tuple[Site, list[str], int]:
    """Write the website; return it (pages, img rows), the GIMP pages and the broken-link count."""
    site = Site(root, params)
    site.write_static()
    site.write_robots()
    gimp_pages = gimp.copy_manual(
        roots["gimp-help-en"], root / "gimp", params.gimp_max_pages, params.seed
    )
    langs, per_page = params.languages, params.items_per_page
    pages = gallery.openclipart_pages(site, on_site["openclipart"], per_page)
    pages += gallery.emoji_pages(site, on_site["emoji"], langs, per_page)
    pages += gallery.tuxpaint_pages(site, on_site["tuxpaint"], langs, per_page)
    raster = [it for s in SOURCES for it in on_site[s] if it.raster]
    pages += gallery.duplicate_pages(site, raster, params.duplicate_url_rate, params.seed, per_page)
    pages += gallery.planted_pages(site, planted, per_page)
    private = gallery.private_pages(
        site, raster, params.private_items, params.seed, params.disallowed_section
    )
    broken = gallery.add_broken_links(pages, params.broken_links, params.seed)
    for spec in [*pages, *private, *gallery.index_pages(pages, gimp_pages, private)]:
        site.render(spec)
    site.rows += gimp.gimp_rows(root, gimp_pages, params.base_url)
    return site, gimp_pages, broken


def write_archives(
    params: SampleParams, site_root: Path, pages: list[str], out: Path
) -> dict[str, Any]:
    """WARC+WAT files, `pages_per_archive` pages each, one Ray task per file; and index.json."""
    out.mkdir(parents=True, exist_ok=True)
    n = params.pages_per_archive
    chunks = [pages[i : i + n] for i in range(0, len(pages), n)]
    calls = {
        f"{k:05d}": (
            archives.write_archive_pair,
            (
                str(site_root),
                chunk,
                k,
                k * n,
                params.base_url,
                params.warc_date,
                params.seed,
                str(out),
            ),
        )
        for k, chunk in enumerate(chunks)
    }
    done = run_all(calls, label="sample: writing WARC/WAT archives")
    index = {
        "base_url": params.base_url,
        "warc": [done[k]["warc"] for k in sorted(done)],
        "wat": [done[k]["wat"] for k in sorted(done)],
        "pages": len(pages),
        "robots_disallowed": [f"/{params.disallowed_section}/"],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def build(params: SampleParams, roots: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """Everything into tmp/: eval sets first (they decide what the site may not show)."""
    work = tmp / ".work"
    loaded = load_sources(params, roots, work)
    on_site, held = heldout.split(params, loaded)
    sets = heldout.write_eval_sets(
        params, held, loaded["emoji"], loaded["fashion"], tmp / "eval", loaded["fashion_train"]
    )
    tables.write_eval_items(sets, tmp / "eval" / "items.parquet")
    suite_counts = suite.write_suite(
        tmp / "suite", tmp / "eval", on_site, loaded["fashion_train"],
        params.suite_val_per_class, params.suite_train_per_class, params.seed,
    )  # fmt: skip
    planted = planting.choose(sets, params.planted_count, params.planted_transforms, params.seed)
    tables.write_planted(planted, tmp / "eval" / "planted_near_duplicates.parquet")
    site, gimp_pages, broken = build_site(params, roots, on_site, planted, tmp / "site")
    disallowed = f"{params.disallowed_section}/"
    crawlable = sorted(p for p in [*gimp_pages, *site.pages] if not p.startswith(disallowed))
    index = write_archives(params, tmp / "site", crawlable, tmp / "archives")
    (tmp / "metadata").mkdir(parents=True, exist_ok=True)
    shutil.move(str(work / "wordnet.parquet"), tmp / "metadata" / "wordnet.parquet")
    rows = tables.write_site_images(site.rows, tmp / "metadata" / "site_images.parquet")
    shutil.rmtree(work)
    counts = {
        "pages": {
            "total": len(site.pages) + len(gimp_pages),
            "gimp": len(gimp_pages),
            "generated": len(site.pages),
            "archived": index["pages"],
            "disallowed": sum(p.startswith(disallowed) for p in site.pages),
        },
        **count_site(tmp / "site", rows, disallowed),
        "eval": {name: len(records) for name, records in sets.items()},
        "eval_train_split": {"fashion_mnist": len(loaded["fashion_train"])},
        "suite": suite_counts,
        "planted_near_duplicates": len(planted),
        "broken_links": broken,
        "archives": {"warc": len(index["warc"]), "wat": len(index["wat"])},
        "wordnet": loaded["wordnet"],
    }
    write_manifest(tmp, counts, params.model_dump(mode="json", exclude={"out_dir"}))  # not where
    return counts


def _log(out: Path, counts: dict[str, Any]) -> None:
    """The manifest and two plots into the active MLflow run (the runner opened it)."""
    import sys

    mlflow = sys.modules.get("mlflow")  # not imported = no run open (and no 4 s import for nothing)
    if mlflow is None or mlflow.active_run() is None:
        return
    from tasks.sample import plots
    from tasks.tracking import log_artifact, log_figure

    log_artifact(out / "manifest.json", "sample")
    log_artifact(out / "archives" / "index.json", "sample")
    try:
        log_figure(plots.pairs_per_source(counts), "sample_pairs_per_source.png")
        log_figure(plots.pair_grid(out), "sample_pairs_grid.png")
    except Exception as exc:  # plots are for people; never fail a finished build on them
        print(f"sample: could not draw plots: {exc}")
