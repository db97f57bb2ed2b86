"""The `decontaminate` stage: hash every crawled image and every eval image (as the crawl would
have stored it, plus crops) and flag the crawl rows whose pHash AND dHash match an eval image.

It runs before any model trains and loads no model, so the teacher (and every later model) can
read only rows that passed it: each training run lists `flagged_uids.parquet` as its
`exclude_uids`. Curate keeps its own decontaminate step (the same hashes plus an embedding gate)
for the student's pool decisions.

Outputs (docs/CONTRACTS.md):
- `flagged_uids.parquet`: one row per (crawl uid, eval image) pair that matched: uid, eval_set,
  eval_id (`<set>/<key>`), reason (eval_near_duplicate_phash | eval_near_duplicate_crop),
  distance (pHash bits), url. A uid matching several eval images (the same picture in emoji
  groups and subgroups) is listed once per image, so leaks can be counted per set.
- `planted_uids.parquet`: the sample's planted copies found among the checked rows: uid, url,
  eval_ids (every eval image it copies), transformation, flagged.
- `eval_hashes.parquet`: every eval view hashed (id, variant = "full" or the crop, image_sha256,
  phash, dhash, image_reason), with the fingerprint of the views in its parquet metadata
  (tasks/decontam/stored.py): curate's decontaminate step reuses it instead of making and
  hashing the same views again.
- `crawl_hashes.parquet`: uid, image_sha256, phash, dhash, image_reason of every crawl image
  checked; curate reuses a pHash / dHash when an image's sha256 is listed (same bytes).
- `summary.json`: the stage's metrics (flag counts per set, planted recall and false positives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.decontam.views import EvalView, crawl_resize
from tasks.decontaminate.params import DecontaminateParams
from tasks.imaging.resize import ResizeParams


def eval_view_of(p: DecontaminateParams) -> EvalView:
    """The view eval images are hashed through: `match.eval_view`, the crawl's resize, crops."""
    resize = crawl_resize() if p.match.eval_view == "crawl" else ResizeParams()
    return EvalView(mode=p.match.eval_view, resize=resize, crops=tuple(p.match.crops))


def eval_features(p: DecontaminateParams) -> pa.Table:
    """Hashes of every eval image's views (whole + crops), with `id` = `<set>/<key>`.

    Eval sets share pictures (emoji groups and subgroups hold the same images; in the demo 3,696
    eval images are 2,725 distinct byte strings): the views of each distinct image are made and
    hashed once and copied to every id holding the same bytes (same bytes, same views, same
    hashes), in the order one pass over every id would give."""
    from tasks.decontam.reading import hash_items, read_shard, shard_items
    from tasks.decontam.views import eval_prefixes, eval_shards, with_eval_ids
    from tasks.io.paths import resolve_path

    eval_dir = resolve_path(p.paths.eval_dir)
    shards = eval_shards(eval_dir) if eval_dir.exists() else {}
    if not shards:
        raise FileNotFoundError(
            f"decontaminate: no eval tars under {eval_dir}/<set>/test (run the sample stage first)"
        )
    view = eval_view_of(p)
    prefixes = eval_prefixes(shards, eval_dir)
    distinct, same_as, order = distinct_eval_images(shards, prefixes)
    items = shard_items(
        {str(k): v for k, v in distinct.items() if v},
        prefixes=prefixes,
        chunk=p.compute.rows_per_block,
    )
    hashed = hash_items(
        items,
        read_shard,
        view,
        "decontaminate: hashing eval images",
        processes=p.local_processes(),
    )
    return with_eval_ids(copy_views(hashed, same_as, order))


def distinct_eval_images(
    shards: dict[Path, list[tuple[str, str]]], prefixes: dict[str, str]
) -> tuple[dict[Path, list[tuple[str, str]]], dict[str, str], list[str]]:
    """(the shards' keys whose bytes were not met before, in order; every eval id -> the id of
    the first image with the same sha256, for repeats; every eval id in reading order)."""
    import hashlib

    from tasks.io.wds import read_images

    first: dict[str, str] = {}
    same_as: dict[str, str] = {}
    order: list[str] = []
    distinct: dict[Path, list[tuple[str, str]]] = {}
    for tar, keys in shards.items():
        prefix = prefixes[str(tar)]
        digests = {k: hashlib.sha256(data).hexdigest() for k, data, _ in read_images(tar)}
        kept = []
        for key, text in keys:
            uid = prefix + key
            order.append(uid)
            digest = digests.get(key)
            if digest is not None and digest in first:
                same_as[uid] = first[digest]
                continue
            if digest is not None:
                first[digest] = uid
            kept.append((key, text))
        distinct[tar] = kept
    return distinct, same_as, order


def copy_views(hashed: pa.Table, same_as: dict[str, str], order: list[str]) -> pa.Table:
    """The hashed rows of the distinct images plus, for every repeated id, a copy of its
    original's rows under its own uid; rows grouped by uid in `order`, each uid's views in the
    order the view made them."""
    by_uid: dict[str, list[dict]] = {}
    for row in hashed.to_pylist():
        by_uid.setdefault(row["uid"], []).append(row)
    rows: list[dict] = []
    for uid in order:
        source = by_uid.get(same_as.get(uid, uid), [])
        rows.extend({**r, "uid": uid} for r in source)
    return pa.Table.from_pylist(rows, schema=hashed.schema)


def crawl_features(p: DecontaminateParams) -> pa.Table:
    """uid, url, shard and hashes of every sample with an image in the checked shards."""
    from tasks.decontam.reading import hash_items
    from tasks.decontaminate.reading import list_shards, read_crawl_shard, shard_items
    from tasks.io.paths import resolve_path

    shards = list_shards(resolve_path(p.paths.shards))  # any crawl layout
    items = shard_items(shards, p.compute.rows_per_block)
    rows = hash_items(
        items,
        read_crawl_shard,
        label="decontaminate: hashing crawl images",
        processes=p.local_processes(),
    )
    if rows.num_rows == 0:
        raise ValueError(f"decontaminate: the shards under {p.paths.shards} hold no image samples")
    return rows.sort_by("uid")


def flagged_table(rows: pa.Table, pairs: pa.Table) -> pa.Table:
    """The matched pairs with the crawl row's uid and url and the eval set of the image."""
    idx = pairs.column("row")
    uids = rows.column("uid").take(idx)
    urls = (
        rows.column("url").take(idx)
        if "url" in rows.column_names
        else pa.nulls(pairs.num_rows, pa.string())
    )
    eval_ids = pairs.column("eval_id").to_pylist()
    table = pa.table(
        {
            "uid": uids,
            "eval_set": pa.array([i.split("/", 1)[0] for i in eval_ids], pa.string()),
            "eval_id": pa.array(eval_ids, pa.string()),
            "reason": pairs.column("reason"),
            "distance": pairs.column("distance"),
            "url": urls.cast(pa.string()),
        }
    )
    return table.sort_by([("uid", "ascending"), ("eval_id", "ascending")])


def _flagged_distances(
    rows: pa.Table, reasons: list[str | None], refs: list[str | None], p: DecontaminateParams
) -> list[float | None]:
    """Pixel distance of each flagged row's image to the eval image it was matched to (None for
    rows not flagged): what tells look-alikes from false positives in the planted report."""
    from tasks.decontam.views import EvalView, flagged_distances
    from tasks.io.paths import resolve_path

    uids, shards = rows.column("uid").to_pylist(), rows.column("shard").to_pylist()
    flagged = [
        (i, uids[i], shards[i], str(ref))
        for i, (r, ref) in enumerate(zip(reasons, refs, strict=True))
        if r and ref
    ]
    resize = crawl_resize() if p.match.eval_view == "crawl" else ResizeParams()
    view = EvalView(mode=p.match.eval_view, resize=resize)
    return flagged_distances(rows.num_rows, flagged, resolve_path(p.paths.eval_dir), view)


def planted_report(
    rows: pa.Table, ev: pa.Table, planted: Path, p: DecontaminateParams
) -> tuple[dict[str, Any], pa.Table]:
    """Recall / false positives on the planted copies (the library's planted_recall over the
    closest match of each row), and the planted copies found among the rows."""
    from tasks.decontam.matching import row_decisions
    from tasks.decontam.planted import planted_eval_ids, planted_recall, site_path

    reasons, refs = row_decisions(rows, ev, p.match.thresholds())
    urls = rows.column("url").to_pylist()
    metrics = planted_recall(
        planted,
        urls,
        reasons,
        refs,
        distances=_flagged_distances(rows, reasons, refs, p),
        lookalike_mad=p.qa.lookalike_mad,
    )
    copies = planted_eval_ids(planted)
    kinds = _transformations(planted)
    found = [
        (uid, url, site_path(url), r is not None)
        for uid, url, r in zip(rows.column("uid").to_pylist(), urls, reasons, strict=True)
        if site_path(url) in copies
    ]
    table = pa.table(
        {
            "uid": pa.array([f[0] for f in found], pa.string()),
            "url": pa.array([f[1] for f in found], pa.string()),
            "eval_ids": pa.array([copies[str(f[2])] for f in found], pa.list_(pa.string())),
            "transformation": pa.array([kinds.get(str(f[2])) for f in found], pa.string()),
            "flagged": pa.array([f[3] for f in found], pa.bool_()),
        }
    )
    return metrics, table


def _transformations(planted: Path) -> dict[str, str]:
    """site path -> transformation of each planted copy ({} without the column)."""
    import pyarrow.parquet as pq

    t = pq.read_table(planted)
    if "transformation" not in t.column_names or "site_path" not in t.column_names:
        return {}
    return {
        str(s).lstrip("/"): str(k)
        for s, k in zip(
            t.column("site_path").to_pylist(), t.column("transformation").to_pylist(), strict=True
        )
    }


def run(params: DecontaminateParams) -> dict[str, Any]:
    """Hash, match, write the flagged list and the planted report; return the metrics."""
    from tasks.decontam.matching import match_pairs
    from tasks.decontam.stored import (
        CRAWL_COLUMNS,
        CRAWL_HASHES_FILE,
        EVAL_COLUMNS,
        EVAL_HASHES_FILE,
        views_fingerprint,
        write_table,
    )
    from tasks.io import atomic_write_json
    from tasks.io.paths import resolve_path

    p = params
    out_dir = resolve_path(p.paths.out_dir)
    ev = eval_features(p)
    print(f"[decontaminate] hashed {ev.num_rows} eval views", flush=True)
    write_table(
        ev.select(EVAL_COLUMNS),
        out_dir / EVAL_HASHES_FILE,
        fingerprint=views_fingerprint(resolve_path(p.paths.eval_dir), eval_view_of(p)),
    )
    rows = crawl_features(p)
    print(f"[decontaminate] hashed {rows.num_rows} crawl images", flush=True)
    write_table(rows.select(CRAWL_COLUMNS), out_dir / CRAWL_HASHES_FILE)
    flagged = flagged_table(rows, match_pairs(rows, ev, p.match.thresholds()))
    write_table(flagged, out_dir / "flagged_uids.parquet")
    reasons = rows.column("image_reason").to_pylist()
    flagged_uids = set(flagged.column("uid").to_pylist())
    metrics: dict[str, Any] = {
        "rows_checked": rows.num_rows,
        "rows_unhashable": sum(r is not None for r in reasons),
        "eval_images": sum(v == "full" for v in ev.column("variant").to_pylist()),
        "eval_views": ev.num_rows,
        "flagged_uids": len(flagged_uids),
        "flagged_pairs": flagged.num_rows,
    }
    sets = flagged.column("eval_set").to_pylist()
    uids = flagged.column("uid").to_pylist()
    for name in sorted(set(sets)):
        metrics[f"flagged_{name}"] = len({u for u, s in zip(uids, sets, strict=True) if s == name})
    planted = resolve_path(p.paths.planted)
    if planted is not None and planted.exists():
        qa, copies = planted_report(rows, ev, planted, p)
        metrics.update(qa)
        write_table(copies, out_dir / "planted_uids.parquet")
    elif planted is not None:
        raise FileNotFoundError(
            f"decontaminate: paths.planted {planted} does not exist (set it to null for no recall)"
        )
    atomic_write_json(out_dir / "summary.json", metrics)
    print(
        f"[decontaminate] flagged {len(flagged_uids)} of {rows.num_rows} crawl images"
        + (
            f", planted recall {metrics['decontam_recall']:.3f}"
            if "decontam_recall" in metrics
            else ""
        ),
        flush=True,
    )
    return metrics
