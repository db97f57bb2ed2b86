"""WordNet parquet and the manifest."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq


def test_wordnet_has_every_synset(small_sample):
    out, _, counts = small_sample
    table = pq.read_table(out / "metadata" / "wordnet.parquet")
    rows = {r["synset_id"]: r for r in table.to_pylist()}
    assert len(rows) == 117_659
    assert sum(r["pos"] == "n" for r in rows.values()) == 82_115
    dog = rows["n02084071"]
    assert dog["lemmas"][:2] == ["dog", "domestic dog"] and "Canis familiaris" in dog["lemmas"]
    assert "n02083346" in dog["hypernyms"] and dog["in_imagenet21k"]
    assert dog["gloss"].startswith("a member of the genus Canis")
    assert all(h in rows for r in rows.values() for h in r["hypernyms"])
    assert counts["wordnet"]["in_imagenet21k"] > 20_000


def test_manifest_hashes_every_file(small_sample):
    out, _, counts = small_sample
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    assert sorted(manifest["files"]) == files
    for rel in files[:: max(1, len(files) // 50)]:
        assert manifest["files"][rel] == hashlib.sha256((out / rel).read_bytes()).hexdigest()
    assert manifest["counts"]["eval"] == counts["eval"]
    assert {"gimp", "openclipart", "emoji", "tuxpaint", "planted"} <= set(counts["pairs"])
