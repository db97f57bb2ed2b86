"""Hash matching of pool rows against eval images (whole views and crops), no model.

A row matches an eval image when its pHash AND dHash are both within the thresholds of the same
eval view (on the sample's clip-art, pHash alone confuses look-alike shapes). Whole views and
crops have their own thresholds: a crop is compared with the crops the eval view cut
(tasks.decontam.views.EvalView), which sit farther from their source than re-encodes do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.decontam.hashing import hamming_pairs, hash_codes, hex_to_u64

REASON_HASH = "eval_near_duplicate_phash"  # matched an eval image's whole view
REASON_CROP = "eval_near_duplicate_crop"  # matched one of an eval image's crops


@dataclass(frozen=True)
class HashThresholds:
    """Hamming thresholds (bits of 64) of a match; crops are only compared when `crops` is set."""

    hash_max_distance: int  # pHash bits to a whole eval view (AND dHash below)
    dhash_max_distance: int  # dHash bits to the same whole view
    crops: bool  # compare with the eval crops too
    crop_hash_max_distance: int  # pHash bits to an eval crop (AND dHash below)
    crop_dhash_max_distance: int  # dHash bits to the same crop


def variants(ev: pa.Table) -> list[str]:
    """Each eval row's variant: "full" (the whole view) or a crop name; all "full" without the
    column (eval rows hashed without a view)."""
    if "variant" in ev.column_names:
        return [str(v) for v in ev.column("variant").to_pylist()]
    return ["full"] * ev.num_rows


def split_variants(ev: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(eval rows that are whole views, eval rows that are crops) as index arrays."""
    v = variants(ev)
    whole = np.array([i for i, x in enumerate(v) if x == "full"], dtype=np.int64)
    crops = np.array([i for i, x in enumerate(v) if x != "full"], dtype=np.int64)
    return whole, crops


def hash_pairs(
    rows: pa.Table, ev: pa.Table, eval_rows: np.ndarray, max_p: int, max_d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, eval row, pHash distance) for every pair within BOTH thresholds (pHash and dHash to
    the same eval image), restricted to the given eval rows; rows without hashes never match."""
    empty = np.array([], dtype=np.int64)
    ph, dh = rows.column("phash").to_pylist(), rows.column("dhash").to_pylist()
    have = np.array([i for i, h in enumerate(ph) if h is not None and dh[i] is not None], np.int64)
    eval_ph, eval_dh = ev.column("phash").to_pylist(), ev.column("dhash").to_pylist()
    eval_have = np.array(
        [j for j in eval_rows if eval_ph[j] is not None and eval_dh[j] is not None], np.int64
    )
    if not len(have) or not len(eval_have):
        return empty, empty, empty
    a, b, dist = hamming_pairs(
        hash_codes([ph[i] for i in have]), hash_codes([eval_ph[j] for j in eval_have]), max_p
    )
    row_d = hex_to_u64([dh[i] for i in have])
    eval_d = hex_to_u64([eval_dh[j] for j in eval_have])
    both = np.bitwise_count(row_d[a] ^ eval_d[b]) <= max_d
    return have[a[both]], eval_have[b[both]], dist[both]


def closest(pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[int, int]:
    """row -> the eval row of its pair with the smallest pHash distance (the first on ties)."""
    best: dict[int, tuple[int, int]] = {}
    for r, j, d in zip(*(x.tolist() for x in pairs), strict=True):
        if r not in best or d < best[r][1]:
            best[r] = (j, d)
    return {r: j for r, (j, _) in best.items()}


def match_pairs(rows: pa.Table, ev: pa.Table, t: HashThresholds) -> pa.Table:
    """Every (row, eval image id) the hashes match, one line per pair: `row` (index into rows),
    `eval_id` (the eval table's `id`), `reason` (REASON_HASH when the whole view matches, else
    REASON_CROP), `distance` (the smallest pHash distance of that pair over its views).

    All pairs, not only the closest per row: the same picture sits in several eval sets (emoji
    groups and subgroups), and a leak report per set needs each of them.
    """
    ids = ev.column("id").to_pylist()
    whole, crops = split_variants(ev)
    found: dict[tuple[int, str], tuple[str, int]] = {}
    passes = []
    if t.crops and len(crops):
        passes.append((REASON_CROP, crops, t.crop_hash_max_distance, t.crop_dhash_max_distance))
    passes.append((REASON_HASH, whole, t.hash_max_distance, t.dhash_max_distance))
    for reason, eval_rows, max_p, max_d in passes:  # whole views last: they win the reason
        for r, j, d in zip(
            *(x.tolist() for x in hash_pairs(rows, ev, eval_rows, max_p, max_d)), strict=True
        ):
            key = (r, str(ids[j]))
            old = found.get(key)
            whole_wins = reason == REASON_HASH and old is not None and old[0] != REASON_HASH
            closer = old is not None and old[0] == reason and d < old[1]
            if old is None or whole_wins or closer:
                found[key] = (reason, d)
    keys = sorted(found)
    return pa.table(
        {
            "row": pa.array([k[0] for k in keys], pa.int64()),
            "eval_id": pa.array([k[1] for k in keys], pa.string()),
            "reason": pa.array([found[k][0] for k in keys], pa.string()),
            "distance": pa.array([found[k][1] for k in keys], pa.int64()),
        }
    )


def row_decisions(
    rows: pa.Table, ev: pa.Table, t: HashThresholds
) -> tuple[list[str | None], list[str | None]]:
    """Per row: (reason, eval image id) of its closest match, whole views before crops, as
    curate's step decides without an embedding gate; (None, None) for rows matching nothing."""
    ids = ev.column("id").to_pylist()
    whole, crops = split_variants(ev)
    reasons: list[str | None] = [None] * rows.num_rows
    refs: list[str | None] = [None] * rows.num_rows
    if t.crops and len(crops):
        pairs = hash_pairs(rows, ev, crops, t.crop_hash_max_distance, t.crop_dhash_max_distance)
        for r, j in closest(pairs).items():
            reasons[r], refs[r] = REASON_CROP, ids[j]
    pairs = hash_pairs(rows, ev, whole, t.hash_max_distance, t.dhash_max_distance)
    for r, j in closest(pairs).items():
        reasons[r], refs[r] = REASON_HASH, ids[j]
    return reasons, refs
