"""MetaCLIP matching rules: padding, punctuation, case, set semantics, bad text, metadata merge."""

from __future__ import annotations

import json
import random

import pytest

from tasks.curate.matching import Matcher, get_matcher, naive_match, spacing
from tasks.curate.metadata import (
    MetadataError,
    build_metadata,
    merge_entries,
    save_metadata,
    user_entries,
)

ENTRIES = ["dog", "hot dog", "cat", "St. Louis", "a", "Dog", "3", "U.S.", "dog house", "house"]


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(ENTRIES)


def ids(*names: str) -> list[int]:
    return sorted(ENTRIES.index(n) for n in names)


def test_spacing_is_metaclips():
    assert spacing("a,b.c;d:e?f!g`h") == " a , b . c ; d : e ? f ! g ` h "
    assert spacing("x\ty\nz\rw") == " x y z w "
    assert spacing("") == "  "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a dog", ("a", "dog")),
        ("dog.", ("dog",)),  # punctuation is padded
        ("dog,cat", ("dog", "cat")),
        ("(dog)", ()),  # brackets are not padded: no match
        ("dogs", ()),  # no stemming
        ("DOG", ()),  # case-sensitive
        ("Dog", ("Dog",)),
        ("hot dog", ("hot dog", "dog")),  # overlapping entries all match
        ("dog house", ("dog", "dog house", "house")),
        ("dog\tcat\nhouse", ("dog", "cat", "house")),
        ("St. Louis", ()),  # the entry's own '.' is not padded, the text's is: MetaCLIP behaviour
        ("dog dog dog", ("dog",)),  # a set: counted once
        ("3!", ("3",)),
        ("hotdog", ()),
    ],
)
def test_rules(matcher: Matcher, text: str, expected: tuple[str, ...]):
    assert matcher.match(text) == ids(*expected)
    assert naive_match(text, ENTRIES) == ids(*expected)


def test_automaton_agrees_with_naive_on_random_texts(matcher: Matcher):
    rng = random.Random(0)
    vocab = [*ENTRIES, "the", ",", ".", "!", "(", "\n", "x", "dogs", "hot", "St", "Louis", "U", "S"]
    for _ in range(2000):
        text = "".join(
            rng.choice(vocab) + rng.choice(["", " ", " ", "\t"]) for _ in range(rng.randint(0, 12))
        )
        assert matcher.match(text) == naive_match(text, ENTRIES), repr(text)


def test_bad_texts_get_reasons(matcher: Matcher):
    texts = [None, "", "   \t", b"\xff\xfe dog", "dog\udcff", "dog " * 30_000, b"a dog", "a dog"]
    got_ids, reasons = matcher.match_many(texts, max_chars=100_000 - 1)
    assert reasons == [
        "text_missing",
        "text_empty",
        "text_whitespace",
        "text_not_utf8",
        "text_not_utf8",
        "text_too_long",
        None,
        None,
    ]
    assert got_ids[:6] == [[]] * 6
    assert got_ids[6] == got_ids[7] == ids("a", "dog")


def test_long_text_matches_when_allowed(matcher: Matcher):
    text = "x " * 50_000 + "cat"
    assert len(text) > 100_000
    got, reasons = matcher.match_many([text], max_chars=200_000)
    assert reasons == [None] and got == [ids("cat")]


def test_matcher_refuses_empty_and_duplicate_entries():
    with pytest.raises(ValueError, match="empty"):
        Matcher(["dog", " "])
    with pytest.raises(ValueError, match="duplicate"):
        Matcher(["dog", "dog"])


def test_merge_counts_what_it_drops(tmp_path):
    meta = merge_entries([["dog", "", "cat", "dog"], ["  ", "cat", "Cat"]])
    assert meta.entries == ("dog", "cat", "Cat")
    assert meta.dropped == {"empty": 2, "duplicate": 2}
    (tmp_path / "a.txt").write_text("fox\n\nowl\nfox\n")
    (tmp_path / "b.json").write_text(json.dumps(["owl", "emu"]))
    built = build_metadata(None, [tmp_path / "a.txt", tmp_path / "b.json"], include_numbers=True)
    assert built.entries[:3] == ("fox", "owl", "emu") and built.entries[-1] == "99"
    assert built.dropped == {"empty": 1, "duplicate": 2}


def test_bad_metadata_files_raise(tmp_path):
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(MetadataError, match="JSON list"):
        user_entries(tmp_path / "bad.json")
    with pytest.raises(MetadataError, match="UTF-8"):
        user_entries(tmp_path / "bin.txt")
    with pytest.raises(MetadataError, match="not found"):
        user_entries(tmp_path / "missing.txt")
    with pytest.raises(MetadataError, match="empty"):
        build_metadata(None, [])


def test_wordnet_lemmas(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"synset_id": ["n1", "n2"], "lemmas": [["hot_dog", "frank"], ["dog", "frank"]]}),
        tmp_path / "wn.parquet",
    )
    meta = build_metadata(tmp_path / "wn.parquet")
    assert meta.entries == ("hot dog", "frank", "dog") and meta.dropped["duplicate"] == 1


def test_worker_matcher_is_built_once(tmp_path):
    meta = merge_entries([["dog", "cat"]])
    save_metadata(meta, tmp_path / "m.parquet")
    first = get_matcher(tmp_path / "m.parquet")
    assert get_matcher(tmp_path / "m.parquet") is first
    assert first.match("a cat") == [1]


def test_arrow_batch_path_equals_list_path(matcher: Matcher):
    texts = ["a dog.", "", None, "Dog house", "hot dog\tcat", "café dog", "x " * 60_000, b"dog"]
    arrow_ids, arrow_reasons = matcher.match_arrow(texts, max_chars=1000)
    list_ids, list_reasons = matcher.match_many(texts, max_chars=1000)
    assert arrow_ids.to_pylist() == list_ids and arrow_reasons.to_pylist() == list_reasons
