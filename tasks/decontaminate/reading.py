"""Read the checked shards as rows to hash: every sample with an image, keyed by its uid."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def list_tars(folder: Path) -> list[Path]:
    """The *.tar shards of the folder, sorted; a clear error naming the folder when there are none."""
    tars = sorted(folder.glob("*.tar")) if folder.is_dir() else []
    if not tars:
        where = (
            "does not exist"
            if not folder.exists()
            else "holds no *.tar shards (a crawl written with output.output_format=files or "
            "parquet: decontaminate reads webdataset only)"
        )
        raise FileNotFoundError(
            f"decontaminate: shards folder {folder} {where} (run the crawl stage first)"
        )
    return tars


def shard_items(tars: list[Path], chunk: int) -> list[dict[str, Any]]:
    """One item per `chunk` sample keys of a shard (keys with an image: what training reads)."""
    from tasks.io.wds import IMAGE_EXTS, sample_keys

    items = []
    for tar in tars:
        keys = sample_keys(tar, IMAGE_EXTS)
        for i in range(0, len(keys), chunk):
            items.append({"shard": str(tar), "uids": keys[i : i + chunk]})
    return items


def read_crawl_shard(item: dict[str, Any]) -> list[dict[str, Any]]:
    """uid (the sample key), image bytes, url (from the `.json` side file; None without) and the
    shard of the listed keys: the url ties a row to the sample's planted copies."""
    from tasks.io.wds import read_images, sample_json

    return [
        {
            "uid": key,
            "image": data,
            "text": "",
            "url": sample_json(parts).get("url"),
            "shard": item["shard"],
        }
        for key, data, parts in read_images(item["shard"], set(item["uids"]))
    ]
