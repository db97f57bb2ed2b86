"""Evaluation images to decontaminate against, and recall / false positives on planted copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.curate.images import IMAGE_EXTS, iter_tar_samples


def eval_shards(eval_dir: Path) -> dict[Path, list[tuple[str, str]]]:
    """Every eval tar (any split) -> [(sample key, "")]; the id of an image is `<set>/<key>`."""
    out: dict[Path, list[tuple[str, str]]] = {}
    for tar in sorted(eval_dir.glob("*/*/*.tar")):
        keys = [k for k, parts in iter_tar_samples(tar) if any(e in parts for e in IMAGE_EXTS)]
        out[tar] = [(k, "") for k in keys]
    return out


def image_shards(folder: Path) -> dict[Path, list[tuple[str, str]]]:
    """Target images for the image-based filter: .tar shards anywhere under the folder."""
    return {
        tar: [(k, "") for k, _ in iter_tar_samples(tar)] for tar in sorted(folder.rglob("*.tar"))
    }


def eval_prefixes(shards: dict[Path, list[tuple[str, str]]], eval_dir: Path) -> dict[str, str]:
    """shard -> `<set>/`: eval sets reuse sample keys (s0000000 is in every set)."""
    return {str(tar): tar.relative_to(eval_dir).parts[0] + "/" for tar in shards}


def with_eval_ids(features: pa.Table) -> pa.Table:
    """The eval image id is its `<set>/<key>` uid."""
    return features.append_column("id", features.column("uid"))


def _col(table: pa.Table, *names: str) -> list[Any]:
    for n in names:
        if n in table.column_names:
            return table.column(n).to_pylist()
    raise KeyError(
        f"planted near-duplicates file has none of the columns {names}: {table.column_names}"
    )


def planted_recall(
    planted_path: Path, pool_urls: list[str], flagged: list[bool], refs: list[str | None]
) -> dict[str, Any]:
    """Recall = planted site images whose pool row was flagged as an eval near-duplicate;
    false positives = flagged pool rows whose URL is not a planted image.
    A pool row matches a planted image when its URL ends with the planted site path."""
    import pyarrow.parquet as pq

    planted = pq.read_table(planted_path)
    paths = [
        str(p).lstrip("/")
        for p in _col(planted, "site_path", "site_image_path", "path", "image_path")
    ]
    planted_set = set(paths)

    def site_path(url: str | None) -> str | None:
        if not url:
            return None
        for p in (url.split("://", 1)[-1].split("/", 1)[-1],):
            return p
        return None

    row_path = [site_path(u) for u in pool_urls]
    in_pool = {p for p in row_path if p in planted_set}
    found = {p for p, f in zip(row_path, flagged, strict=True) if f and p in planted_set}
    false_pos = sum(1 for p, f in zip(row_path, flagged, strict=True) if f and p not in planted_set)
    return {
        "decontam_planted": len(planted_set),
        "decontam_planted_in_pool": len(in_pool),
        "decontam_recall": len(found) / len(in_pool) if in_pool else float("nan"),
        "decontam_false_positives": false_pos,
        "decontam_flagged": int(sum(flagged)),
    }
