"""DataComp's basic filter: language, word and character counts, minimum side, aspect ratio."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tasks.curate.params import BasicParams
from tasks.curate.steps.base import Step, StepContext, StepResult


def detect_language(text: str) -> str:
    """py3langid's ISO 639-1 code; used when the crawl left the language column empty."""
    import py3langid

    return py3langid.classify(text)[0]


def _size(cols: dict[str, list[Any]], name: str, i: int) -> int | None:
    for col in (f"original_{name}", name):
        if col in cols:
            value = cols[col][i]
            if value is not None:
                return int(value)
    return None


def _reason(cols: dict[str, list[Any]], i: int, text: str, p: BasicParams) -> str | None:
    if p.languages:
        lang = cols["language"][i] if "language" in cols else None
        if (lang or detect_language(text)) not in p.languages:
            return "language"
    if len(text.split()) < p.min_words:
        return "too_few_words"
    if len(text) < p.min_chars:
        return "too_few_chars"
    w, h = _size(cols, "width", i), _size(cols, "height", i)
    if w is None or h is None or min(w, h) <= 0:
        return "image_size_unknown"
    if min(w, h) < p.min_side:
        return "image_too_small"
    if max(w, h) / min(w, h) > p.max_aspect:
        return "aspect_ratio"
    return None


class Basic(Step[BasicParams]):
    """Language, text length, original image size and aspect ratio; rows only, no inputs."""

    name = "basic"
    params_model = BasicParams

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        texts = rows.column("text").to_pylist()
        wanted = ("language", "width", "height", "original_width", "original_height")
        # columns as lists once: per-row scalar access costs ~10x (streamed blocks of 64k rows)
        cols = {c: rows.column(c).to_pylist() for c in wanted if c in rows.column_names}
        reasons = [_reason(cols, i, t or "", self.params) for i, t in enumerate(texts)]
        return StepResult.from_reasons(reasons)
