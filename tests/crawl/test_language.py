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


def _batch_texts() -> list[str]:
    import random

    rng = random.Random(0)
    words = " ".join(TEXTS).split() + ["logo", "photo", "IMG_0042.jpg", "©", "👍", "...", "x"]
    texts = list(TEXTS) + [t.upper() for t in TEXTS] + ["", "ab", "  abc  ", "!!!", "12345"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12))) for _ in range(400)]
    texts += ["Ein langer Satz über Füchse im Schnee " * 20]  # over BATCH_MAX_BYTES: one by one
    return texts


def _one_by_one(texts: list[str]) -> list[str]:
    ident = language._identifier()
    return [str(ident.classify(t)[0]) if len(t.strip()) >= 3 else "" for t in texts]


@pytest.mark.parametrize(("tolerance", "batch"), [(language._TIE_TOLERANCE, 64), (0.0, 16384)])
def test_batch_detection_equals_one_text_at_a_time(monkeypatch, tolerance, batch):
    """detect_languages (batched DFA walk + sparse scores) gives py3langid's per-text answers,
    in one batch or several; with the tie tolerance at 0 nothing is sent back to py3langid, so
    the batch path alone is compared."""
    monkeypatch.setattr(language, "_TIE_TOLERANCE", tolerance)
    monkeypatch.setattr(language, "BATCH_TEXTS", batch)
    texts = _batch_texts()
    expected = _one_by_one(texts)
    assert len(set(expected)) >= 6
    assert language.detect_languages(texts) == expected
    assert language.detect_languages([]) == []
    assert [language.detect_language(t) for t in texts] == expected
