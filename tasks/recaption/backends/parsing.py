"""Robust reading of a vision-language model's reply into HQ-CLIP's four fields.

Models wrap JSON in prose or ``` fences, stop mid-object when they hit the token limit, write
tags as one comma-separated string, or return nothing. `parse_reply` takes the first JSON object
in the reply (fences stripped); a truncated object is closed if cutting it at its last complete
member makes it valid (the fields before the cut are kept, the reply is still flagged
`truncated_json`); anything else is an Annotation with `error` = the reason and a snippet.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tasks.recaption.backends.base import FIELDS, Annotation

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class ReplyError(ValueError):
    """The reply holds no usable JSON object; the message is the row's reason."""


def _first_object(text: str) -> tuple[dict[str, Any], bool]:
    """(the first JSON object in `text`, whether it had to be repaired)."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    if start < 0:
        raise ReplyError(f"not_json: no JSON object in reply {_snippet(text)}")
    decoder = json.JSONDecoder()
    try:
        obj, _ = decoder.raw_decode(body[start:])
    except json.JSONDecodeError:
        obj = _repair(body[start:])
        if obj is None:
            raise ReplyError(
                f"half_json: unreadable JSON object in reply {_snippet(text)}"
            ) from None
        return obj, True
    if not isinstance(obj, dict):
        raise ReplyError(f"not_json: reply is not a JSON object {_snippet(text)}")
    return obj, False


def _repair(body: str) -> dict[str, Any] | None:
    """Cut a truncated object after its last complete `"key": value` member and close it."""
    for cut in range(len(body), 0, -1):
        if body[cut - 1] not in ',}]"0123456789el':  # a member can only end on these
            continue
        candidate = body[:cut].rstrip().rstrip(",")
        for closing in ("}", "]}"):  # a cut string is dropped, never closed
            try:
                obj = json.loads(candidate + closing)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj:
                return obj
    return None


def _text(value: Any, name: str, max_chars: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReplyError(f"bad_field: {name} is {type(value).__name__}, not text")
    value = " ".join(value.split())
    if len(value) > max_chars:
        raise ReplyError(
            f"too_long: {name} has {len(value)} characters (limits.max_chars={max_chars})"
        )
    return value or None


def _tags(value: Any, name: str, max_tags: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise ReplyError(f"bad_field: {name} is {type(value).__name__}, not a list of tags")
    tags = [" ".join(str(v).split()) for v in value if isinstance(v, (str, int, float))]
    return list(dict.fromkeys(t for t in tags if t))[:max_tags]


def parse_reply(reply: str | None, source: str, max_chars: int, max_tags: int) -> Annotation:
    """The four fields of a reply, each credited to `source`; errors become the row's reason."""
    if reply is None or not reply.strip():
        return Annotation(error="empty_output: the model returned nothing")
    try:
        obj, repaired = _first_object(reply)
        ann = Annotation(
            long_positive=_text(obj.get("long_positive"), "long_positive", max_chars),
            long_negative=_text(obj.get("long_negative"), "long_negative", max_chars),
            short_positive=_tags(obj.get("short_positive"), "short_positive", max_tags),
            short_negative=_tags(obj.get("short_negative"), "short_negative", max_tags),
        )
    except ReplyError as exc:
        return Annotation(error=str(exc))
    ann.sources = {f: source for f in FIELDS if getattr(ann, f)}
    if not ann.sources:
        ann.error = f"no_fields: the JSON object names none of {', '.join(FIELDS)}"
    elif repaired:
        ann.error = "truncated_json: reply cut short, fields before the cut kept"
    return ann


def _snippet(text: str, n: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat[:n] + ("…" if len(flat) > n else ""))
