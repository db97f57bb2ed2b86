"""DataComp's text-based filter: English and some word whose FIRST WordNet synset is an ImageNet-21k class.

"First synset" = the first synset listed for the word in the WordNet parquet, nouns before other
parts of speech (the file keeps WordNet's order; WordNet lists a word's senses by frequency).
Plural nouns are reduced with morphy's noun rules (-s, -ses, -xes, -zes, -ches, -shes, -men, -ies).
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from tasks.curate.params import TextBasedParams
from tasks.curate.steps.base import Step, StepContext, StepResult
from tasks.curate.steps.basic import detect_language
from tasks.io.paths import resolve_path

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_NOUN_SUFFIXES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
)


def first_synset_in21k(path: str | Path) -> dict[str, bool]:
    """lower-case single-word lemma -> whether its first synset is an ImageNet-21k class."""
    import pyarrow.parquet as pq

    table = pq.read_table(
        path, columns=["synset_id", "pos", "lemmas", "in_imagenet21k"]
    ).to_pylist()
    table.sort(key=lambda r: r["pos"] != "n")  # stable: nouns first, file order kept within
    first: dict[str, bool] = {}
    for row in table:
        for lemma in row["lemmas"] or []:
            word = lemma.lower()
            if "_" not in word and " " not in word and word not in first:
                first[word] = bool(row["in_imagenet21k"])
    return first


def candidates(word: str) -> list[str]:
    out = [word]
    out.extend(
        word[: -len(suf)] + rep
        for suf, rep in _NOUN_SUFFIXES
        if word.endswith(suf) and len(word) > len(suf) + 1
    )
    return out


def has_in21k_word(text: str, first: dict[str, bool]) -> bool:
    return any(first.get(c, False) for w in _WORD.findall(text.lower()) for c in candidates(w))


class TextBased(Step[TextBasedParams]):
    """Keeps English texts holding a word whose first WordNet synset is an ImageNet-21k class."""

    name = "text_based"
    params_model = TextBasedParams

    def __init__(self, params: TextBasedParams) -> None:
        super().__init__(params)
        self.first: dict[str, bool] = {}

    def setup(self, ctx: StepContext) -> None:
        """Read the WordNet file once per run (metadata.wordnet)."""
        wordnet = ctx.params.metadata.wordnet
        if not wordnet:
            raise ValueError(
                "text_based needs metadata.wordnet (ImageNet-21k synsets come from it)"
            )
        self.first = first_synset_in21k(resolve_path(wordnet))

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        return text_based(rows, self.first, self.params.languages)


def text_based(rows: pa.Table, first: dict[str, bool], languages: list[str]) -> StepResult:
    """Per row: `language` when not in `languages`, `no_imagenet21k_word` without such a word."""
    reasons: list[str | None] = []
    langs = (
        rows.column("language").to_pylist()
        if "language" in rows.column_names
        else [None] * rows.num_rows
    )
    for text, lang in zip(rows.column("text").to_pylist(), langs, strict=True):
        text = text or ""
        if languages and (lang or detect_language(text)) not in languages:
            reasons.append("language")
        elif not has_in21k_word(text, first):
            reasons.append("no_imagenet21k_word")
        else:
            reasons.append(None)
    return StepResult.from_reasons(reasons)
