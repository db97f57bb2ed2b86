"""The tagger, the composer, the chain and the reply parser, on a tiny random teacher (a
code-path test for tag quality: the checks are against the teacher's own scores)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.recaption.actor import run_chain
from tasks.recaption.backends.base import Annotation, CaptionRequest
from tasks.recaption.backends.composer import Composer
from tasks.recaption.backends.parsing import parse_reply
from tasks.recaption.backends.tagger import Tagger
from tasks.recaption.params import ComposerParams, TaggerParams
from tasks.recaption.teacher import load_teacher
from tasks.recaption.wordnet import load_nouns, vocabulary
from tests.recaption.conftest import image_bytes, write_wordnet


@pytest.fixture()
def nouns(tmp_path):
    return load_nouns(str(write_wordnet(tmp_path / "wn.parquet")))


def _req(i: int, alt: str, tags: tuple[str, ...] = ()) -> CaptionRequest:
    import io

    data = image_bytes(i)
    return CaptionRequest(f"u{i}", Image.open(io.BytesIO(data)).convert("RGB"), alt, tags, data)


def test_wordnet_nouns_and_co_hyponyms(nouns):
    assert vocabulary(nouns, "imagenet21k") == [
        "animal",
        "dog",
        "cat",
        "fox",
        "fruit",
        "apple",
        "pear",
        "square",
        "circle",
    ]
    assert "house" in vocabulary(nouns, "all") and "run" not in vocabulary(nouns, "all")
    assert nouns.co_hyponyms("dog") == ["cat", "fox"]
    assert nouns.co_hyponyms("domestic dog") == ["cat", "fox"]
    assert nouns.co_hyponyms("square") == []  # no hypernym, no siblings


def test_tagger_positives_are_the_teachers_top_k_and_negatives_rank_low(nouns):
    teacher = load_teacher("random:clipmill-tiny")
    entries = vocabulary(nouns, "all")
    params = TaggerParams(top_k=2, negatives=2, neighbours=5, negative_min_rank=4)
    tagger = Tagger(teacher, entries, params)
    reqs = [_req(i, "x") for i in range(3)]
    anns = tagger.annotate(reqs)
    img = teacher.encode_images([r.data for r in reqs], [r.image for r in reqs])
    scores = img @ teacher.encode_texts(entries).T
    for ann, row in zip(anns, scores, strict=True):
        order = [entries[i] for i in np.argsort(-row, kind="stable")]
        assert ann.short_positive == order[:2]
        assert ann.short_negative, "some entries rank below 4 of 10"
        for neg in ann.short_negative:
            assert order.index(neg) >= 4 and neg not in ann.short_positive
        assert ann.sources["short_positive"].startswith("tagger:")


def test_composer_swaps_one_concept_for_a_co_hyponym(nouns):
    composer = Composer(nouns, ComposerParams(tags_in_positive=2), seed=0)
    [ann] = composer.annotate([CaptionRequest("u1", None, "a happy dog", ("animal", "square"))])  # type: ignore[arg-type]
    assert ann.long_positive == "A happy dog, showing an animal and a square."
    assert ann.long_negative in (
        "A happy cat, showing an animal and a square.",
        "A happy fox, showing an animal and a square.",
    )
    again = composer.annotate([CaptionRequest("u1", None, "a happy dog", ("animal", "square"))])[0]  # type: ignore[arg-type]
    assert again.long_negative == ann.long_negative  # seeded by uid: reruns write the same text
    [bare] = composer.annotate([CaptionRequest("u2", None, "", ())])  # type: ignore[arg-type]
    assert bare.error and bare.long_positive is None


class _Raises:
    name = "boom"
    model_version = "v0"

    def annotate(self, requests):
        raise RuntimeError("weights on fire")


class _Fills:
    name = "fills"
    model_version = "v1"

    def annotate(self, requests):
        return [
            Annotation(long_positive=f"lp {r.uid}", sources={"long_positive": "fills:v1"})
            for r in requests
        ]


def test_chain_fills_only_empty_fields_and_a_raising_backend_is_each_rows_reason(nouns):
    composer = Composer(nouns, ComposerParams(), seed=0)
    reqs = [_req(0, "a dog"), _req(1, "a cat")]
    anns = run_chain([_Fills(), _Raises(), composer], reqs)
    for a, r in zip(anns, reqs, strict=True):
        assert a.long_positive == f"lp {r.uid}"  # the composer did not overwrite it
        assert a.sources["long_positive"] == "fills:v1"
        assert a.error == "boom: backend raised RuntimeError: weights on fire"
    assert anns[0].long_negative and anns[0].sources["long_negative"] == "composer:templates-v1"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty_output"),
        ("no json here", "not_json"),
        ('{"long_positive": "a do', "half_json"),
        ('{"colour": "red"}', "no_fields"),
        ('{"long_positive": 3}', "bad_field"),
        ('{"long_positive": "' + "x" * 50 + '"}', "too_long"),
    ],
)
def test_bad_replies_become_reasons(reply, reason):
    ann = parse_reply(reply, "hf:m", max_chars=40, max_tags=4)
    assert ann.error and ann.error.startswith(reason)
    assert not ann.sources


def test_fenced_and_truncated_replies_keep_what_is_whole():
    fenced = 'Sure!\n```json\n{"long_positive": "a dog", "short_positive": "dog, pet, dog"}\n```'
    ann = parse_reply(fenced, "hf:m", max_chars=100, max_tags=4)
    assert ann.error is None and ann.short_positive == ["dog", "pet"]
    cut = parse_reply('{"long_positive": "a dog", "short_positive": ["dog", "pe', "hf:m", 100, 4)
    assert cut.long_positive == "a dog" and cut.short_positive == ["dog"]
    assert cut.error and cut.error.startswith("truncated_json")


def test_pool_vocabulary_keeps_the_nouns_the_alt_texts_name(nouns):
    from tasks.recaption.wordnet import pool_vocabulary

    names = vocabulary(nouns, "all") + ["domestic dog"]
    texts = ["A Dog and a domestic  dog", "the foxes", None, "apple-pie"]
    assert pool_vocabulary(names, texts) == ["dog", "domestic dog"]  # whole words only
