"""Hand-made pools for the curate tests: a LanceDB `pool` table (tasks/pool.py schema) plus
webdataset shards of generated images, and a tiny eval set with one planted copy."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tasks.io.wds import write_tar


def image_bytes(
    seed: int, size: tuple[int, int] = (256, 256), fmt: str = "JPEG", quality: int = 90
) -> bytes:
    """A distinctive picture: smooth random blobs (so perceptual hashes are stable under re-encoding)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def use_decontaminate_match(root: Path, monkeypatch: pytest.MonkeyPatch, **match) -> Path:
    """Make `root` the settings' root with a copy of the committed params whose
    params/decontaminate.yaml `match` section has `match` set: curate's decontaminate step reads
    its hash thresholds and eval crops there (tasks/curate/inputs.py), as it reads crawl's
    `resize`. Returns the file."""
    import shutil

    import yaml

    from tasks import PROJECT_ROOT
    from tasks.settings import get_settings

    shutil.copytree(PROJECT_ROOT / "params", root / "params", dirs_exist_ok=True)
    path = root / "params" / "decontaminate.yaml"
    data = yaml.safe_load(path.read_text())
    data["match"].update(match)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("CLIPMILL_ROOT", str(root))  # undone after the test (tests/conftest.py)
    get_settings.cache_clear()
    return path


def reencode(data: bytes, size: tuple[int, int], quality: int = 70) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class HandPool:
    root: Path
    lance_uri: str
    crawl_dir: Path
    eval_dir: Path
    planted: Path
    metadata: Path
    expect: dict[str, str] = field(default_factory=dict)  # uid -> expected drop reason prefix


def _row(
    uid: str, text: str, size: tuple[int, int], data: bytes | None, shard: str | None, **kw
) -> dict:
    return {
        "uid": uid,
        "url": f"http://sample.clipmill.test/img/{uid}.jpg",
        "text": text,
        "texts": [text],
        "page_url": "http://sample.clipmill.test/",
        "language": kw.get("language", "en"),
        "sha256": hashlib.sha256(data).hexdigest() if data else None,
        "width": size[0],
        "height": size[1],
        "original_width": size[0],
        "original_height": size[1],
        "shard": shard,
        "status": kw.get("status", "success"),
        "error": None,
    }


def build_pool(root: Path) -> HandPool:
    """~40 rows: good pairs over a few head/tail entries, and one row per kind of trouble."""
    import lancedb
    import pyarrow as pa

    from tasks.pool import POOL_SCHEMA

    crawl = root / "crawl"
    rows, samples, expect = [], [], {}
    good_texts = [
        "a photo of a dog on grass",
        "a black cat sleeping here",
        "a red car parked outside",
        "a dog and a cat playing",
        "the old house on the hill",
    ]
    for i in range(30):
        uid = f"good{i:03d}"
        data = image_bytes(i)
        rows.append(
            _row(
                uid, good_texts[i % len(good_texts)] + f" number {i}", (256, 256), data, "00000.tar"
            )
        )
        samples.append(
            (
                uid,
                {
                    "jpg": data,
                    "txt": rows[-1]["text"].encode(),
                    "json": json.dumps({"uid": uid}).encode(),
                },
            )
        )

    def add(
        uid: str, text: str, data: bytes | None, size=(256, 256), expect_reason: str = "", **kw
    ):
        rows.append(_row(uid, text, size, data, kw.pop("shard", "00000.tar"), **kw))
        if data is not None:
            samples.append((uid, {"jpg": data, "txt": text.encode("utf-8", "surrogatepass")}))
        expect[uid] = expect_reason

    add(
        "zexact",
        "a photo of a dog on grass again",
        image_bytes(0),
        expect_reason="exact_dedup:duplicate_sha256",
    )
    add(
        "zphash",
        "a photo of a cat on a sofa",
        reencode(image_bytes(1), (250, 250)),
        expect_reason="perceptual_dedup:duplicate_phash",
    )
    add("bempty", "", image_bytes(101), expect_reason="input:text_empty")
    add("bspace", "   \t ", image_bytes(102), expect_reason="input:text_whitespace")
    add("blong", "dog " * 30_000, image_bytes(103), expect_reason="input:text_too_long")
    add(
        "bfrench",
        "un chien noir qui dort dans le jardin",
        image_bytes(104),
        language="fr",
        expect_reason="basic:language",
    )
    add("bshort", "dog", image_bytes(105), expect_reason="basic:too_few_words")
    add(
        "bsmall",
        "a small picture of a dog",
        image_bytes(106, (100, 100)),
        size=(100, 100),
        expect_reason="basic:image_too_small",
    )
    add(
        "bwide",
        "a very wide picture of a dog",
        image_bytes(107, (800, 200)),
        size=(800, 200),
        expect_reason="basic:aspect_ratio",
    )
    add(
        "bfail",
        "a dog that failed to download",
        None,
        status="http_404",
        shard=None,
        expect_reason="input:download_http_404",
    )
    add(
        "bnoshard",
        "a dog whose shard went missing",
        None,
        shard="99999.tar",
        expect_reason="input:image_shard_missing",
    )
    add(
        "bnomatch",
        "zebra quagga okapi giraffe",
        image_bytes(108),
        expect_reason="balance:no_metadata_match",
    )
    # the planted copy of eval image e0 (resized + re-encoded, as the sample stage plants them)
    eval_imgs = {f"e{i}": image_bytes(1000 + i) for i in range(6)}
    add(
        "zplanted",
        "a photo of a dog in a museum",
        reencode(eval_imgs["e0"], (240, 240)),
        expect_reason="decontaminate:eval_near_duplicate_phash",
    )
    write_tar(crawl / "shards" / "00000.tar", samples)
    for r in rows:  # the pool's shard column is relative to the crawl output
        if r["shard"]:
            r["shard"] = f"shards/{r['shard']}"

    db = lancedb.connect(str(root / "lancedb"))
    db.create_table("pool", pa.Table.from_pylist(rows, schema=POOL_SCHEMA))

    eval_dir = root / "eval"
    write_tar(
        eval_dir / "toyset" / "test" / "0.tar",
        [(k, {"png": v, "cls": b"0"}) for k, v in eval_imgs.items()],
    )
    planted = eval_dir / "planted_near_duplicates.parquet"
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "site_path": ["img/zplanted.jpg"],
                "eval_set": ["toyset"],
                "eval_key": ["e0"],
                "transformation": ["resize"],
            }
        ),
        planted,
    )
    metadata = root / "entries.txt"
    metadata.write_text("dog\ncat\ncar\nhouse\nphoto\n\ndog\n")
    return HandPool(root, str(root / "lancedb"), crawl, eval_dir, planted, metadata, expect)


@pytest.fixture()
def hand_pool(tmp_path: Path) -> HandPool:
    return build_pool(tmp_path)
