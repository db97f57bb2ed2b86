"""WordNet nouns for the tagger (its vocabulary) and the composer (co-hyponyms of a concept),
read from the sample stage's `metadata/wordnet.parquet` (synset_id, pos, lemmas, hypernyms,
in_imagenet21k)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


class WordNetError(FileNotFoundError):
    """The WordNet metadata file is missing or holds no nouns; the message names the file."""


@dataclass(frozen=True)
class Nouns:
    """Noun synsets: their first lemma (the entry shown), lemma -> synsets, hypernym -> children."""

    synsets: tuple[str, ...]  # synset ids, file order
    names: tuple[str, ...]  # first lemma of each synset, underscores as spaces
    in_imagenet21k: tuple[bool, ...]
    hypernyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    children: dict[str, tuple[str, ...]] = field(default_factory=dict)
    by_lemma: dict[str, tuple[str, ...]] = field(default_factory=dict)  # lower-case lemma -> ids

    def name_of(self, synset: str) -> str:
        return self.names[self.index[synset]]

    @property
    def index(self) -> dict[str, int]:
        return _index(self)

    def co_hyponyms(self, lemma: str) -> list[str]:
        """Names of the siblings (same hypernym, other synset) of the noun senses of `lemma`
        (those it is the first lemma of, when any), sorted and without the lemma itself:
        plausible stand-ins that are wrong."""
        out: set[str] = set()
        senses = self.by_lemma.get(lemma.lower(), ())
        # Prefer the senses the lemma heads (`dog` -> the animal, not the "support" sense).
        headed = [s for s in senses if self.name_of(s).lower() == lemma.lower()]
        for sid in headed or senses:
            for parent in self.hypernyms.get(sid, ()):
                for sibling in self.children.get(parent, ()):
                    if sibling != sid:
                        out.add(self.name_of(sibling))
        out.discard(lemma)
        return sorted(n for n in out if n.lower() != lemma.lower())


_INDEX: dict[int, dict[str, int]] = {}


def _index(nouns: Nouns) -> dict[str, int]:
    key = id(nouns)
    if key not in _INDEX:
        _INDEX[key] = {s: i for i, s in enumerate(nouns.synsets)}
    return _INDEX[key]


@lru_cache(maxsize=4)
def load_nouns(path: str) -> Nouns:
    """Every noun synset of the metadata file (cached per process: actors read it once)."""
    import pyarrow.parquet as pq

    from tasks.io.nodefetch import ensure_local

    ensure_local(path)  # a Ray node without the driver's data cache: from the bucket data root
    if not Path(path).is_file():
        raise WordNetError(f"paths.wordnet: {path} not found (run the sample stage first)")
    table = pq.read_table(
        path, columns=["synset_id", "pos", "lemmas", "hypernyms", "in_imagenet21k"]
    )
    synsets, names, inet = [], [], []
    hyper: dict[str, tuple[str, ...]] = {}
    children: dict[str, list[str]] = {}
    by_lemma: dict[str, list[str]] = {}
    for row in table.to_pylist():
        if row["pos"] != "n" or not row["lemmas"]:
            continue
        sid = row["synset_id"]
        synsets.append(sid)
        names.append(row["lemmas"][0].replace("_", " "))
        inet.append(bool(row["in_imagenet21k"]))
        hyper[sid] = tuple(row["hypernyms"] or ())
        for parent in hyper[sid]:
            children.setdefault(parent, []).append(sid)
        for lemma in row["lemmas"]:
            by_lemma.setdefault(lemma.replace("_", " ").lower(), []).append(sid)
    if not synsets:
        raise WordNetError(f"paths.wordnet: {path} holds no noun synsets")
    return Nouns(
        synsets=tuple(synsets),
        names=tuple(names),
        in_imagenet21k=tuple(inet),
        hypernyms=hyper,
        children={k: tuple(v) for k, v in children.items()},
        by_lemma={k: tuple(v) for k, v in by_lemma.items()},
    )


def vocabulary(nouns: Nouns, which: str) -> list[str]:
    """The tagger's entries: first lemmas of the chosen synsets, in file order, distinct
    ignoring case (the first spelling is kept)."""
    keep = [
        n
        for n, inet in zip(nouns.names, nouns.in_imagenet21k, strict=True)
        if which == "all" or inet
    ]
    first: dict[str, str] = {}
    for name in keep:  # "Popper" and "popper" are two synsets but one tag
        first.setdefault(name.lower(), name)
    return list(first.values())


def pool_vocabulary(names: list[str], texts: list[str], max_words: int = 3) -> list[str]:
    """The entries of `names` that some text names as a whole word or phrase (case-insensitive,
    up to `max_words` words): a vocabulary sized to the pool, in `names` order. MetaCLIP matches
    its metadata against alt texts the same way (substring of whole words)."""
    import re

    wanted = {n.lower(): n for n in names}
    seen: set[str] = set()
    for text in texts:
        words = re.findall(r"[a-z0-9][a-z0-9'-]*", (text or "").lower())
        for n in range(1, max_words + 1):
            for i in range(len(words) - n + 1):
                phrase = " ".join(words[i : i + n])
                if phrase in wanted:
                    seen.add(phrase)
    return [name for name in names if name.lower() in seen]
