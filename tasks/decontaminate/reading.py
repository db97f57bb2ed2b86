"""Read the checked shards as rows to hash: every sample with an image, keyed by its uid.

The crawl's shards may be in any of its layouts (output.output_format: webdataset, files,
parquet); the library's reader (tasks/io/crawlshards.py) reads them all alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.io.crawlshards import CrawlShard


def list_shards(folder: Path) -> list[CrawlShard]:
    """The crawl shards of the folder in any layout, sorted; a clear error naming the folder
    when there are none."""
    from tasks.io.crawlshards import list_shards as crawl_shards

    return crawl_shards(folder, who="decontaminate")


def shard_items(shards: list[CrawlShard], chunk: int) -> list[dict[str, Any]]:
    """One item per `chunk` sample keys of a shard (keys with an image: what training reads)."""
    from tasks.io.crawlshards import sample_keys

    items = []
    for shard in shards:
        keys = sample_keys(shard)
        for i in range(0, len(keys), chunk):
            items.append({"shard": shard.path, "uids": keys[i : i + chunk]})
    return items


def read_crawl_shard(item: dict[str, Any]) -> list[dict[str, Any]]:
    """uid (the sample key), image bytes, url (from the sample's metadata; None without) and the
    shard of the listed keys: the url ties a row to the sample's planted copies."""
    from tasks.io.crawlshards import iter_samples

    return [
        {
            "uid": s.uid,
            "image": s.image,
            "text": "",
            "url": s.meta.get("url"),
            "shard": item["shard"],
        }
        for s in iter_samples(item["shard"], set(item["uids"]))
    ]
