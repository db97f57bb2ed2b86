"""Backend `composer`: the two long texts written from the alt text and the tags, no model.

Long positive: the alt text (trimmed, first letter capitalised) followed by the first
`tags_in_positive` positive tags, "Fuel pump, showing a gas pump, a pump and a nozzle."
Long negative (plausible but wrong): the long positive with ONE concept swapped for a WordNet
co-hyponym (a sibling under the same hypernym: dog -> fox, apple -> apricot). The concept swapped
is the last alt-text word (English noun phrases end in their head noun: "fuel pump" -> pump),
then the one before, then the tags, that has a co-hyponym (words of one or two letters and a few
function words are skipped); the sibling is picked by a seeded hash of
the uid, so reruns write the same text. A row where no word has a co-hyponym gets no long negative
(and no error: the field stays empty for a later backend).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tasks.recaption.backends.base import Annotation, CaptionRequest

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_STOP = frozenset(
    [
        "the",
        "and",
        "with",
        "for",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "this",
        "that",
        "these",
        "those",
        "its",
        "his",
        "her",
    ]
)


class Composer:
    name = "composer"
    model_version = "templates-v1"

    def __init__(self, nouns: Any, params: Any, seed: int) -> None:
        self.nouns = nouns  # tasks.recaption.wordnet.Nouns (or None: no negatives)
        self.params = params  # ComposerParams
        self.seed = seed

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        return [self._one(r) for r in requests]

    def _one(self, r: CaptionRequest) -> Annotation:
        positive = self.positive(r.alt_text, list(r.tags))
        if not positive:
            return Annotation(error="composer: neither alt text nor tags to write from")
        negative = self.negative(r.uid, positive, r.alt_text, list(r.tags))
        ann = Annotation(long_positive=positive, long_negative=negative)
        source = f"{self.name}:{self.model_version}"
        ann.sources = {f: source for f in ("long_positive", "long_negative") if getattr(ann, f)}
        return ann

    def positive(self, alt_text: str, tags: list[str]) -> str | None:
        alt = " ".join(alt_text.split()).strip(" .")
        named = [t for t in tags if t.lower() not in alt.lower()][: self.params.tags_in_positive]
        if not alt and not named:
            return None
        head = alt[:1].upper() + alt[1:] if alt else "A picture"
        if named:
            listed = ", ".join(_article(t) for t in named[:-1])
            listed = f"{listed} and {_article(named[-1])}" if listed else _article(named[-1])
            head = f"{head}, showing {listed}"
        return _cut(head + ".", self.params.max_chars)

    def negative(self, uid: str, positive: str, alt_text: str, tags: list[str]) -> str | None:
        """Swap the first concept (an alt-text word, else a tag) that has a co-hyponym."""
        if self.nouns is None:
            return None
        words = [w for w in _WORD.findall(alt_text) if len(w) > 2 and w.lower() not in _STOP]
        candidates = words[::-1] + tags  # English noun phrases end in their head noun
        for concept in candidates:
            siblings = self.nouns.co_hyponyms(concept)
            siblings = [s for s in siblings if s.lower() not in positive.lower()]
            if not siblings:
                continue
            pick = siblings[_stable_index(f"{self.seed}:{uid}:{concept}", len(siblings))]
            swapped = re.sub(
                rf"\b{re.escape(concept)}\b", pick, positive, count=1, flags=re.IGNORECASE
            )
            if swapped != positive:
                return _cut(swapped, self.params.max_chars)
        return None


def _article(noun: str) -> str:
    """English article by spelling, with the common "uni-/eu-/one" exceptions (a uniform)."""
    low = noun.lower()
    vowel = low[:1] in "aeiou" and not low.startswith(("uni", "eu", "one", "use", "usu"))
    return f"an {noun}" if vowel else f"a {noun}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _stable_index(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def build(params: Any) -> Composer:
    """From RecaptionParams: WordNet nouns for the co-hyponyms, the composer section, the seed."""
    from tasks.io.paths import resolve_path
    from tasks.recaption.wordnet import load_nouns

    return Composer(
        load_nouns(str(resolve_path(params.paths.wordnet))), params.composer, params.seed
    )
