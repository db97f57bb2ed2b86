"""Language of a text with py3langid, whose model ships inside the wheel (no download at run time)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _identifier() -> Any:
    try:
        import py3langid
    except ImportError as exc:  # pragma: no cover - the package is pinned in requirements
        raise ImportError("the crawl stage needs py3langid (requirements/extra.txt)") from exc
    return py3langid


def detect_language(text: str, min_chars: int = 3) -> str:
    """ISO 639-1 code of `text`, "" when it is too short to say anything."""
    if not text or len(text.strip()) < min_chars:
        return ""
    lang, _prob = _identifier().classify(text)
    return str(lang)
