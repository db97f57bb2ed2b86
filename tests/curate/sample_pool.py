"""A pool built straight from the sample site's images (what crawl would produce), for measuring
dedup and decontamination on the real sample data before the crawl stage's pool exists."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from tasks import PROJECT_ROOT
from tasks.io.wds import write_tar

SAMPLE = PROJECT_ROOT / "data" / "sample"
BASE_URL = "http://sample.clipmill.test/"


def sample_available(sample: Path = SAMPLE) -> bool:
    return (sample / "metadata" / "site_images.parquet").exists() and (
        sample / "eval" / "planted_near_duplicates.parquet"
    ).exists()


def build_small_sample(out: Path) -> Path:
    """A slice of the real sample data (the sample stage with caps), for a fresh checkout."""
    from tasks.sample.params import SampleParams
    from tasks.sample.stage import run

    caps = dict(
        openclipart_max_items=300,
        emoji_max_items=300,
        tuxpaint_max_items=150,
        gimp_max_pages=20,
        fashion_mnist_max_items=200,
        planted_count=40,
    )
    run(SampleParams(out_dir=str(out), **caps))
    return out


def build_site_pool(
    root: Path,
    others: int | None,
    seed: int = 0,
    shard_size: int = 2000,
    sample: Path = SAMPLE,
) -> str:
    """LanceDB pool + webdataset shards of every planted site image plus `others` random site
    images (None = all of them). Returns the LanceDB URI."""
    import random

    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from tasks.pool import POOL_SCHEMA

    site = pq.read_table(sample / "metadata" / "site_images.parquet").to_pylist()
    planted = set(
        pq.read_table(sample / "eval" / "planted_near_duplicates.parquet")
        .column("site_path")
        .to_pylist()
    )
    by_path: dict[str, dict] = {}
    for r in site:
        by_path.setdefault(r["path"], r)
    paths = sorted(p for p in by_path if (sample / "site" / p).exists())
    rest = [p for p in paths if p not in planted]
    if others is not None:
        rest = random.Random(seed).sample(rest, min(others, len(rest)))
    chosen = sorted(planted & set(paths)) + sorted(rest)
    rows, shard_files = [], {}
    for i, path in enumerate(chosen):
        data = (sample / "site" / path).read_bytes()
        url = BASE_URL + path
        uid = hashlib.sha224(url.encode()).hexdigest()[:24]
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:
            w = h = None
        shard = f"shards/{i // shard_size:05d}.tar"
        ext = path.rsplit(".", 1)[-1].lower()
        shard_files.setdefault(shard, []).append((uid, {"jpg" if ext == "jpeg" else ext: data}))
        alt = by_path[path].get("alt")
        rows.append(
            {
                "uid": uid,
                "url": url,
                "text": alt,
                "texts": [alt] if alt else [],
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": w,
                "height": h,
                "original_width": w,
                "original_height": h,
                "shard": shard,
                "status": "success",
            }
        )
    for shard, samples in shard_files.items():
        write_tar(root / "crawl" / shard, samples)
    uri = str(root / "lancedb")
    lancedb.connect(uri).create_table("pool", pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return uri
