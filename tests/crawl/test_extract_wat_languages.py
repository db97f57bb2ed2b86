"""WAT languages detected in the plan's reduce, once per distinct text, equal per-text detection.

The crawl's extraction tasks call extract_wat(languages=False) and the plan's partition reduce
fills the languages (tasks.crawl.language.fill_languages). Both tests compare with the slow,
obviously right way: py3langid on the first text of every ref (tests/crawl/wat_reference.py),
then the first non-empty language of each URL (records.merge_refs).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import pytest

from tasks.crawl import language
from tasks.crawl.language import LANGUAGE_LATER, fill_languages
from tasks.crawl.plan import plan_rows, read_all_rows
from tasks.crawl.records import merge_refs

from .test_extract_wat_pinned import _doc, write_records
from .wat_reference import reference_extract_wat, reference_language

TEXTS = [
    "a red fox in the snow",
    "ein roter Fuchs im Schnee",
    "le renard roux dans la neige",
    "el zorro rojo en la nieve",
    "красная лиса в снегу",
    "ab",  # too short for a language
    "  x ",
    "",
    "12345",
]


def _reference(urls: list[str], texts: list[list[str]], langs: list[str]) -> dict[str, str]:
    """Each URL's first non-empty language, every pending ref detected on its own."""
    out: dict[str, str] = {}
    for url, ts, lang in zip(urls, texts, langs, strict=True):
        if lang == LANGUAGE_LATER:
            lang = reference_language(ts[0]) if ts else ""
        if not out.get(url):
            out[url] = lang
    return out


def test_fill_languages_equals_per_text_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    urls, texts, langs = [], [], []
    for _ in range(600):
        urls.append(f"http://h.test/{rng.randrange(150)}.jpg")
        ts = [t for t in rng.sample(TEXTS, rng.randrange(0, 3)) if t]
        texts.append(ts)
        # pending (WAT), known (a URL list or page detected at once: may disagree), or none
        langs.append(rng.choice([LANGUAGE_LATER] * 4 + ["", "xx"]) if ts else "")
    calls: list[list[str]] = []
    real = language.detect_languages

    def counting(batch: Any, min_chars: int = language.MIN_CHARS) -> list[str]:
        calls.append(list(batch))
        return real(batch, min_chars)

    monkeypatch.setattr(language, "detect_languages", counting)
    filled = fill_languages(urls, texts, langs)
    assert LANGUAGE_LATER not in filled
    assert [f for f, lang in zip(filled, langs, strict=True) if lang != LANGUAGE_LATER] == [
        lang for lang in langs if lang != LANGUAGE_LATER
    ]  # known languages are kept
    got: dict[str, str] = {}
    for url, lang in zip(urls, filled, strict=True):
        if not got.get(url):
            got[url] = lang
    want = _reference(urls, texts, langs)
    assert got == want
    assert {"en", "de", "fr", "xx", ""} <= set(want.values())
    # one batch, each distinct text once, at most one text per URL
    (batch,) = calls
    assert len(batch) == len(set(batch)) <= len(set(urls))
    assert len(batch) < sum(1 for lang in langs if lang == LANGUAGE_LATER)


def test_fill_languages_without_pending_refs_detects_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(language, "detect_languages", lambda *a, **k: pytest.fail("detected"))
    assert fill_languages(["u", "u"], [["a red fox"], []], ["en", ""]) == ["en", ""]


def _wat_files(tmp: Path) -> list[Path]:
    """Two WAT files whose pages share image URLs with texts in several languages, short ones
    first, so a URL's language often comes from a later page or file."""
    rng = random.Random(3)
    files = []
    for f in range(2):
        payloads = []
        for page in range(12):
            links: list[Any] = []
            for _ in range(8):
                u = rng.randrange(40)
                link = {"path": "IMG@/src", "url": f"/img/{u}.jpg"}
                link.update({k: rng.choice(TEXTS) for k in rng.sample(["alt", "title"], 2)})
                links.append(link)
            payloads.append(("metadata", _doc(f"http://h.test/f{f}/p{page}.html", links)))
        path = tmp / f"f{f}.wat.gz"
        write_records(path, payloads)
        files.append(path)
    return files


def test_the_plans_languages_equal_per_text_detection(tmp_path: Path, ray_session: Any) -> None:
    """The crawl's plan from WAT files (languages detected in the reduce) against warcio + json +
    py3langid per ref + merge_refs."""
    from tasks.crawl.context import build_context
    from tasks.crawl.params import CrawlParams
    from tasks.crawl.stage import ensure_plan

    files = _wat_files(tmp_path)
    p = CrawlParams.model_validate(
        {
            "inputs": {
                "sources": ["wat"],
                "sample_site_dir": "",
                "archives_index": "",
                "wat_files": [str(f) for f in files],
                "shard_size": 16,
                "plan_partitions": 3,
            },
            "output": {"output_dir": str(tmp_path / "crawl"), "progress": False},
        }
    )
    ensure_plan(p, build_context(p, contextlib.ExitStack()))
    got = read_all_rows(str(tmp_path / "crawl"))
    refs = [r for f in files for r in reference_extract_wat(str(f)).refs]
    want = plan_rows(merge_refs(refs), p.inputs.shard_size)
    assert got == want
    by_url = _reference(
        [r.url for r in refs],
        [r.texts for r in refs],
        [LANGUAGE_LATER] * len(refs),
    )
    assert {r["url"]: r["language"] for r in got} == by_url
    assert {"en", "de", "fr", ""} <= {r["language"] for r in got}
    # a URL whose first text is too short took its language from a later ref
    assert any(r["language"] and reference_language(r["caption"]) == "" for r in got)
