"""MetaCLIP-style metadata: the entry list matched against texts (WordNet lemmas + user lists)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO


class MetadataError(ValueError):
    """A metadata source is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Metadata:
    """An ordered, duplicate-free entry list; an entry's id is its index.

    `dropped` counts what merging threw away (empty/whitespace-only entries, duplicates),
    so bad metadata is reported instead of silently shrinking the list.
    """

    entries: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self) -> str:
        """Content hash: stored matches are reusable only with the very same entry list."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(e.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()[:16]


def wordnet_entries(path: str | Path) -> list[str]:
    """Every lemma of every synset, underscores turned into spaces (WordNet writes `hot_dog`)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise MetadataError(f"{path}: WordNet metadata not found (run the sample stage first)")
    table = pq.read_table(path, columns=["lemmas"])
    out: list[str] = []
    for lemmas in table.column("lemmas").to_pylist():
        out.extend(lemma.replace("_", " ") for lemma in lemmas or [] if lemma is not None)
    return out


def user_entries(path: str | Path) -> list[str]:
    """A user list: `.json` = MetaCLIP's JSON list of strings; anything else = one entry per line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetadataError(f"{path}: metadata list not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(
                f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise MetadataError(f"{path}: expected a JSON list of strings (MetaCLIP format)")
        return data
    return text.splitlines()


def merge_entries(sources: Iterable[Iterable[str]]) -> Metadata:
    """Concatenate sources keeping first occurrences; drop (and count) empty and duplicate entries.

    Entries are kept verbatim (matching is case-sensitive and exact); only entries that are
    empty or whitespace-only are removed, since `" " + e + " "` would then match every text.
    """
    seen: set[str] = set()
    entries: list[str] = []
    dropped = {"empty": 0, "duplicate": 0}
    for source in sources:
        for entry in source:
            if not entry or not entry.strip():
                dropped["empty"] += 1
            elif entry in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(entry)
                entries.append(entry)
    return Metadata(tuple(entries), dropped)


def build_metadata(
    wordnet: str | Path | None, extra: Iterable[str | Path] = (), include_numbers: bool = False
) -> Metadata:
    """The stage's metadata: WordNet (optional) + user lists (+ "0".."99"); never empty."""
    sources: list[list[str]] = []
    if wordnet is not None:
        sources.append(wordnet_entries(wordnet))
    sources.extend(user_entries(p) for p in extra)
    if include_numbers:
        sources.append([str(i) for i in range(100)])
    meta = merge_entries(sources)
    if not meta.entries:
        raise MetadataError("metadata is empty: give wordnet_metadata and/or extra_metadata")
    return meta


def save_metadata(meta: Metadata, path: str | Path) -> None:
    """One entry per row, in id order, so workers rebuild the same automaton from a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.io import atomic_write_bytes

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"entry": pa.array(meta.entries, pa.string())}), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def load_entries(path: str | Path | BinaryIO) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    return tuple(pq.read_table(path, columns=["entry"]).column("entry").to_pylist())
