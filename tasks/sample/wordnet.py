"""WordNet 3.0 synsets from wordnet-base's data.* files, with ImageNet-21k membership from timm."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.sample.debian import find_path

POS_FILES = ("noun", "verb", "adj", "adv")
HYPERNYM_POINTERS = {"@", "@i"}  # hypernym and instance hypernym
SCHEMA = pa.schema(
    [
        ("synset_id", pa.string()),  # pos letter + 8-digit offset, e.g. n02084071 (ImageNet's wnid)
        ("pos", pa.string()),  # n v a s r (s = adjective satellite)
        ("lemmas", pa.list_(pa.string())),
        ("gloss", pa.string()),
        ("hypernyms", pa.list_(pa.string())),
        ("in_imagenet21k", pa.bool_()),
    ]
)


def parse_data_line(line: str) -> dict:
    """One synset line of a data.* file (format in wndb(5))."""
    head, _, gloss = line.partition(" | ")
    f = head.split()
    offset, pos, w_cnt = f[0], f[2], int(f[3], 16)
    lemmas = []
    for i in range(w_cnt):
        word = f[4 + 2 * i]
        if pos in ("a", "s") and word.endswith(")") and "(" in word:
            word = word[: word.rindex("(")]  # adjective position markers: (a) (p) (ip)
        lemmas.append(word.replace("_", " "))
    at = 4 + 2 * w_cnt
    p_cnt = int(f[at])
    hypernyms = []
    for j in range(p_cnt):
        symbol, target, target_pos = f[at + 1 + 4 * j : at + 4 + 4 * j]
        if symbol in HYPERNYM_POINTERS:
            hypernyms.append(f"{target_pos}{target}")
    return {
        "synset_id": f"{pos}{offset}",
        "pos": pos,
        "lemmas": lemmas,
        "gloss": gloss.strip(),
        "hypernyms": hypernyms,
    }


def imagenet21k_ids() -> set[str]:
    """The ImageNet-21k (fall 2011) synset ids that timm ships in its wheel.

    Found without importing timm (which imports torch: seconds for a text file).
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the `timm` package is needed for its ImageNet-21k synset list: pip install timm"
        )
    info = Path(spec.submodule_search_locations[0]) / "data" / "_info"
    path = next(iter(sorted(info.glob("imagenet21k_goog_synsets.txt"))), None) or next(
        iter(sorted(info.glob("imagenet2*k*synsets.txt")))
    )
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def load_wordnet(pkg: Path) -> list[dict]:
    rows = []
    in21k = imagenet21k_ids()
    for name in POS_FILES:
        path = find_path(pkg, f"data.{name}", "wordnet-base")
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                row = parse_data_line(line.rstrip("\n"))
                row["in_imagenet21k"] = row["synset_id"] in in21k
                rows.append(row)
    rows.sort(key=lambda r: r["synset_id"])
    return rows


def write_wordnet(pkg: Path, out: Path) -> dict[str, int]:
    """Write metadata/wordnet.parquet; return counts by part of speech."""
    rows = load_wordnet(pkg)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, out, compression="zstd")
    counts = {"synsets": len(rows), "in_imagenet21k": sum(r["in_imagenet21k"] for r in rows)}
    for pos in "nvasr":
        counts[f"pos_{pos}"] = sum(r["pos"] == pos for r in rows)
    return counts
