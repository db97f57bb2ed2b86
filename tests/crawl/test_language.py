"""Language ID from the cached unpacked py3langid model gives py3langid's own answers."""

from __future__ import annotations

import logging

import py3langid
import pytest

from tasks.crawl import language

TEXTS = [
    "A red apple on a wooden kitchen table",
    "Une pomme rouge sur une table de cuisine en bois",
    "Ein roter Apfel auf einem Küchentisch aus Holz",
    "Una manzana roja sobre una mesa de cocina de madera",
    "木製のキッチンテーブルの上の赤いリンゴ",
    "Красное яблоко на деревянном кухонном столе",
]


def test_cached_model_matches_py3langid(tmp_path):
    first = language.load_identifier(tmp_path)
    cached = list(tmp_path.glob("py3langid-*.npz"))
    assert len(cached) == 1  # unpacked once into the cache
    again = language.load_identifier(tmp_path)  # read back from the cache
    expected = [py3langid.classify(t) for t in TEXTS]
    assert [first.classify(t) for t in TEXTS] == expected
    assert [again.classify(t) for t in TEXTS] == expected
    assert [lang for lang, _ in expected] == ["en", "fr", "de", "es", "ja", "ru"]


def test_corrupt_cache_falls_back_to_the_packaged_model(tmp_path, caplog):
    language.load_identifier(tmp_path)
    (cached,) = tmp_path.glob("py3langid-*.npz")
    cached.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        ident = language.load_identifier(tmp_path)
    assert "cache unusable" in caplog.text
    assert ident.classify(TEXTS[1])[0] == "fr"


@pytest.mark.parametrize("text", ["", "  ", "ab"])
def test_too_short_is_unknown(text):
    assert language.detect_language(text) == ""
