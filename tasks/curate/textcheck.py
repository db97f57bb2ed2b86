"""Bad-text detection: every unusable text gets a reason instead of being silently dropped."""

from __future__ import annotations

# Reasons, in the order they are checked.
MISSING = "text_missing"
NOT_UTF8 = "text_not_utf8"
EMPTY = "text_empty"
WHITESPACE = "text_whitespace"
TOO_LONG = "text_too_long"


def as_text(value: object) -> tuple[str | None, str | None]:
    """(usable text, None) or (None, reason). Bytes must be strict UTF-8; str must re-encode.

    A `str` holding lone surrogates is what `errors="surrogateescape"` makes of non-UTF-8 bytes;
    it is flagged too, since nothing downstream (tokenizers, JSON, parquet) can carry it.
    """
    if value is None:
        return None, MISSING
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError:
            return None, NOT_UTF8
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, NOT_UTF8
    return text, None


def text_problem(value: object, max_chars: int) -> str | None:
    """The reason a text cannot be used, or None when it is fine."""
    text, reason = as_text(value)
    if reason:
        return reason
    assert text is not None
    if not text:
        return EMPTY
    if not text.strip():
        return WHITESPACE
    if len(text) > max_chars:
        return TOO_LONG
    return None
