"""Decontamination quality on the copies of eval images the sample stage planted on its site:
recall overall and per transformation, look-alikes and false positives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa


def _col(table: pa.Table, *names: str) -> list[Any]:
    for n in names:
        if n in table.column_names:
            return table.column(n).to_pylist()
    raise KeyError(
        f"planted near-duplicates file has none of the columns {names}: {table.column_names}"
    )


def site_path(url: str | None) -> str | None:
    """Site-relative path of a pool URL (`http://host/a/b.png` -> `a/b.png`)."""
    return url.split("://", 1)[-1].split("/", 1)[-1] if url else None


def _site_sources(planted_path: Path) -> dict[str, str]:
    """site path -> source (openclipart, emoji, ...) from the sample's site metadata when the
    planted file sits in a sample folder (`<sample>/eval/planted...`); {} otherwise."""
    import pyarrow.parquet as pq

    meta = planted_path.parent.parent / "metadata" / "site_images.parquet"
    if not meta.exists():
        return {}
    table = pq.read_table(meta, columns=["path", "source"])
    out: dict[str, str] = {}
    for path, source in zip(
        table.column("path").to_pylist(), table.column("source").to_pylist(), strict=True
    ):
        if path and source:
            out.setdefault(path, source)
    return out


def planted_recall(
    planted_path: Path,
    pool_urls: list[str | None],
    reasons: list[str | None],
    refs: list[str | None] | None = None,
    distances: list[float | None] | None = None,
    lookalike_mad: float = 8.0,
) -> dict[str, Any]:
    """Decontamination quality on the planted copies, broken down.

    A pool row matches a planted image when its URL ends with the planted site path; it is
    flagged when its reason starts with `eval_`. Recall = planted images in the pool that were
    flagged, overall and per transformation (resize, crop, jpeg, color_shift). Among flagged rows
    that are not planted, a look-alike is one within `lookalike_mad` (pixel_distances) of the eval
    image it was matched to: a picture a person would take for that eval image (the sample's
    generated stars, playing cards one pip apart, identical flags); the rest are false positives,
    counted per reason (phash, crop, embedding) and per site source when the sample's site
    metadata is next to the planted file.
    """
    import pyarrow.parquet as pq

    planted = pq.read_table(planted_path)
    paths = [
        str(x).lstrip("/")
        for x in _col(planted, "site_path", "site_image_path", "path", "image_path")
    ]
    kinds = (
        [str(t) for t in _col(planted, "transformation")]
        if "transformation" in planted.column_names
        else ["unknown"] * len(paths)
    )
    kind_of = dict(zip(paths, kinds, strict=True))
    sources = _site_sources(planted_path)
    row_path = [site_path(u) for u in pool_urls]
    flagged = [bool(r and r.startswith("eval_")) for r in reasons]
    dist = distances or [None] * len(flagged)
    in_pool = {x for x in row_path if x in kind_of}
    found: dict[str, str] = {}
    not_planted = lookalikes = 0
    false_pos: dict[str, int] = {}
    for x, f, r, d in zip(row_path, flagged, reasons, dist, strict=True):
        if not f:
            continue
        why = str(r).removeprefix("eval_near_duplicate_")
        if x in kind_of:
            found.setdefault(x, why)
            continue
        not_planted += 1
        if d is not None and d <= lookalike_mad:
            lookalikes += 1
            continue
        false_pos[why] = false_pos.get(why, 0) + 1
        src = f"source_{sources.get(x or '', 'other')}"
        false_pos[src] = false_pos.get(src, 0) + 1
    out: dict[str, Any] = {
        "decontam_planted": len(kind_of),
        "decontam_planted_in_pool": len(in_pool),
        "decontam_recall": len(found) / len(in_pool) if in_pool else float("nan"),
        "decontam_flagged": int(sum(flagged)),
        "decontam_flagged_not_planted": not_planted,
        "decontam_lookalikes": lookalikes,
        "decontam_false_positives": not_planted - lookalikes,
    }
    for kind in sorted(set(kinds)):
        here = [x for x in in_pool if kind_of[x] == kind]
        hit = sum(x in found for x in here)
        out[f"decontam_recall_{kind}"] = hit / len(here) if here else float("nan")
    for why in sorted(set(found.values())):
        out[f"decontam_found_by_{why}"] = sum(v == why for v in found.values())
    out.update({f"decontam_false_positives_{k}": v for k, v in sorted(false_pos.items())})
    return out


def planted_eval_ids(planted_path: Path) -> dict[str, list[str]]:
    """site path of each planted copy -> every eval image id (`<set>/<key>`) it copies: its own
    (`eval_set`, `eval_key`) and `other_eval_keys` (the same picture in other sets)."""
    import pyarrow.parquet as pq

    planted = pq.read_table(planted_path)
    paths = [
        str(x).lstrip("/")
        for x in _col(planted, "site_path", "site_image_path", "path", "image_path")
    ]
    sets = _col(planted, "eval_set")
    keys = _col(planted, "eval_key")
    others = (
        planted.column("other_eval_keys").to_pylist()
        if "other_eval_keys" in planted.column_names
        else [None] * len(paths)
    )
    out: dict[str, list[str]] = {}
    for path, s, k, more in zip(paths, sets, keys, others, strict=True):
        ids = out.setdefault(path, [])
        for i in [f"{s}/{k}", *(more or [])]:
            if i not in ids:
                ids.append(i)
    return out
