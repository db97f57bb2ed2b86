"""A tiny pool for the recaption stage: a few image rows in one crawl shard (plus an
undecodable image, a row whose image is missing from its shard, rows the cheap checks skip),
a tiny WordNet metadata file, and the settings pointing the pool there."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.curate.conftest import hand_pool  # noqa: F401 - curate's pool fixture, for the choice test

COLOURS = [
    (220, 20, 20),
    (20, 200, 40),
    (30, 40, 220),
    (240, 220, 30),
    (200, 30, 200),
    (20, 200, 200),
]


def image_bytes(i: int, size: tuple[int, int] = (96, 96)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
    j = i % 8
    ImageDraw.Draw(img).rectangle([2 + j, 2, 20 + 2 * j, 12 + j], fill=(255 - 30 * j, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# WordNet-shaped rows: (synset_id, pos, lemmas, hypernyms, in_imagenet21k)
SYNSETS = [
    ("n0", "n", ["animal"], [], True),
    ("n1", "n", ["dog", "domestic_dog"], ["n0"], True),
    ("n2", "n", ["cat"], ["n0"], True),
    ("n3", "n", ["fox"], ["n0"], True),
    ("n4", "n", ["fruit"], [], True),
    ("n5", "n", ["apple"], ["n4"], True),
    ("n6", "n", ["pear"], ["n4"], True),
    ("n7", "n", ["square"], [], True),
    ("n8", "n", ["circle"], [], True),
    ("n9", "n", ["house"], [], False),
    ("v1", "v", ["run"], [], False),
]


def write_wordnet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*SYNSETS, strict=True))
    pq.write_table(
        pa.table(
            {
                "synset_id": list(cols[0]),
                "pos": list(cols[1]),
                "lemmas": [list(x) for x in cols[2]],
                "gloss": [""] * len(SYNSETS),
                "hypernyms": [list(x) for x in cols[3]],
                "in_imagenet21k": list(cols[4]),
            }
        ),
        path,
    )
    return path


@dataclass
class RecapPool:
    root: Path
    lance_uri: str
    crawl_dir: Path
    wordnet: Path
    good: list[str]  # uids selected and expected to be annotated

    def overrides(self, **extra: object) -> dict[str, object]:
        """Params overrides pointing the stage at this pool (tiny random teacher)."""
        return {
            "paths.crawl_dir": str(self.crawl_dir),
            "paths.out_dir": str(self.root / "recaption"),
            "paths.teacher": "random:clipmill-tiny",
            "paths.wordnet": str(self.wordnet),
            "select.exclude_uids": str(self.root / "flagged_uids.parquet"),
            "tagger.vocabulary": "all",
            "tagger.pool_only": False,  # the tiny pool names too few nouns; pool_vocabulary is unit-tested
            "tagger.negative_min_rank": 3,
            "tagger.top_k": 2,
            "tagger.negatives": 2,
            "compute.rows_per_block": 3,
            "compute.batch_size": 2,
            "compute.torch_threads": 1,
            "report.examples": 2,
            **extra,
        }


def _row(uid: str, text: str, size: int, shard: str | None, status: str = "success") -> dict:
    return {
        "uid": uid,
        "url": f"http://sample.clipmill.test/{uid}.jpg",
        "text": text,
        "texts": [text],
        "page_url": "http://sample.clipmill.test/",
        "language": "en",
        "sha256": None,
        "width": size,
        "height": size,
        "original_width": size,
        "original_height": size,
        "shard": shard,
        "status": status,
        "error": None,
    }


def build_pool(root: Path, alts: list[str] | None = None) -> RecapPool:
    import lancedb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.io.wds import write_tar
    from tasks.pool import POOL_SCHEMA

    alts = alts or [f"a red dog number {i}" for i in range(7)]
    rows, samples, good = [], [], []
    for i, alt in enumerate(alts):
        uid = f"g{i:03d}"
        data = image_bytes(i)
        rows.append(_row(uid, alt, 96, "shards/00000.tar"))
        samples.append(
            (uid, {"jpg": data, "txt": alt.encode(), "json": json.dumps({"uid": uid}).encode()})
        )
        good.append(uid)
    rows.append(_row("xbroken", "a broken image here", 96, "shards/00000.tar"))
    samples.append(
        ("xbroken", {"jpg": b"\xff\xd8 not really a jpeg", "txt": b"a broken image here"})
    )
    rows.append(_row("xmissing", "an image not in the shard", 96, "shards/00000.tar"))
    rows.append(_row("ysmall", "a tiny picture of a cat", 32, "shards/00000.tar"))
    samples.append(
        ("ysmall", {"jpg": image_bytes(99, (32, 32)), "txt": b"a tiny picture of a cat"})
    )
    rows.append(_row("yword", "cat", 96, "shards/00000.tar"))
    samples.append(("yword", {"jpg": image_bytes(98), "txt": b"cat"}))
    rows.append(_row("yfail", "a failed download", 96, None, status="http_404"))
    # passes every cheap check, but decontaminate flagged it: not recaptioned
    rows.append(_row("zflagged", "a red dog like an eval image", 96, "shards/00000.tar"))
    samples.append(("zflagged", {"jpg": image_bytes(97), "txt": b"a red dog like an eval image"}))
    crawl = root / "crawl"
    write_tar(crawl / "shards" / "00000.tar", samples)
    pq.write_table(pa.table({"uid": ["zflagged"]}), root / "flagged_uids.parquet")
    db = lancedb.connect(str(root / "lancedb"))
    db.create_table("pool", pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    wordnet = write_wordnet(root / "wordnet.parquet")
    return RecapPool(root, str(root / "lancedb"), crawl, wordnet, good)


@pytest.fixture()
def recap_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecapPool:
    from tasks.settings import get_settings

    pool = build_pool(tmp_path)
    monkeypatch.setenv("CLIPMILL_LANCEDB_URI", pool.lance_uri)
    get_settings.cache_clear()
    return pool
