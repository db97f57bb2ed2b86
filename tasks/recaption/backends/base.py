"""The one captioner interface every recaption backend implements, and the backend registry.

A backend turns decoded images (plus their alt text and any tags an earlier backend found) into
HQ-CLIP's four annotations. Backends chain in params order (`backends: [tagger, composer]`):
each fills only the fields the earlier ones left empty (`Annotation.merge`), so a VLM that fills
all four makes later backends no-ops, while the tagger fills the short tags and the composer the
two long texts. A row-level failure (undecodable image, a reply that is not JSON, a timeout) is an
Annotation with `error` set, never an exception for the whole batch: the stage writes the row with
its reason and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

# The four HQ-CLIP fields, by their fixed names (pool columns and curated JSON keys add a prefix).
FIELDS: tuple[str, ...] = ("long_positive", "long_negative", "short_positive", "short_negative")


@dataclass(frozen=True)
class CaptionRequest:
    """One image to annotate: the decoded RGB image, its alt text, tags found earlier in a chain."""

    uid: str
    image: Image.Image  # RGB, decoded
    alt_text: str
    tags: tuple[str, ...] = ()  # short positive tags an earlier backend in the chain found
    data: bytes = b""  # the image bytes as stored in the shard (content-keyed caches); b"" = none


@dataclass
class Annotation:
    """HQ-CLIP's four fields for one sample, which backend made each, and a row-level error.

    `sources` maps a field name (one of FIELDS) to "backend:model_version" for every field set.
    `error` is the reason a backend could not annotate the row (None when it could); a row with
    an error may still hold fields an earlier backend filled.
    """

    long_positive: str | None = None
    long_negative: str | None = None
    short_positive: list[str] = field(default_factory=list)
    short_negative: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def missing(self) -> tuple[str, ...]:
        """The fields still empty (what a later backend in the chain should fill)."""
        return tuple(f for f in FIELDS if not getattr(self, f))

    def merge(self, later: Annotation) -> Annotation:
        """Fill this annotation's empty fields from a later backend's; keep what is already set.

        The first error seen is kept (a later backend's error is appended after it) so the row's
        reason names the backend that failed first.
        """
        for name in self.missing():
            value = getattr(later, name)
            if value:
                setattr(self, name, value)
                if name in later.sources:
                    self.sources[name] = later.sources[name]
        if later.error:
            self.error = later.error if not self.error else f"{self.error}; {later.error}"
        return self


@runtime_checkable
class Captioner(Protocol):
    """A backend: built once per actor (the model loads once), then called on batches."""

    name: str  # the params' backend name, e.g. "tagger"
    model_version: str  # what made the fields (weights hash, model id, server model name)

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        """One Annotation per request, in order; row failures set `error`, never raise."""
        ...


def source_of(captioner: Captioner) -> str:
    """The provenance string stored per field: "backend:model_version"."""
    return f"{captioner.name}:{captioner.model_version}"


# Backend name -> builder taking the stage's params (RecaptionParams; each builder reads its own
# section) and returning a ready Captioner. Builders import their heavy libraries themselves, so
# validating params never imports torch or transformers. Builders are registered by import path
# and resolved lazily (`build_captioner`).
BACKENDS: dict[str, str] = {
    "tagger": "tasks.recaption.backends.tagger:build",
    "composer": "tasks.recaption.backends.composer:build",
    "hf": "tasks.recaption.backends.hf:build",
    "openai": "tasks.recaption.backends.openai:build",
    "coca": "tasks.recaption.backends.coca:build",
}


class UnknownBackendError(ValueError):
    """A params `backends` entry names no registered backend."""


def builder(name: str) -> Callable[[Any], Captioner]:
    """The builder registered for a backend name; UnknownBackendError naming the field otherwise."""
    import importlib

    try:
        path = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise UnknownBackendError(
            f"backends: unknown backend {name!r}; known backends: {known}"
        ) from None
    module, _, attr = path.partition(":")
    fn: Callable[[Any], Captioner] = getattr(importlib.import_module(module), attr)
    return fn


def build_captioner(name: str, params: Any) -> Captioner:
    """Build one backend from the stage's params (called inside the actor that uses it)."""
    return builder(name)(params)
