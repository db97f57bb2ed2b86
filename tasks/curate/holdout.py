"""Hold out a seeded random part of the curated set: pairs no model trains on, drawn from the
training pairs' own distribution, so evaluate's membership audit measures membership and not
distribution shift.

Applied AFTER every step (filters, dedup, balancing) to the kept rows. Which rows: the
`round(n * fraction)` kept uids with the lowest `sha256("<seed>:<uid>")` (halves round up). That
is seeded (same seed, same split; another seed, another split), exact in size, and a uid's rank
does not depend on the other rows, so a re-curation of the same pool (another t, another
threshold) holds out mostly the same pairs instead of reshuffling them into training.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.curate.params import HoldoutParams


def holdout_count(n: int, fraction: float) -> int:
    """How many of `n` kept pairs are held out: round(n * fraction), halves up, at most n."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout.fraction must lie in [0, 1], got {fraction}")
    return min(n, math.floor(n * fraction + 0.5))


def _rank_key(seed: int, uid: str) -> bytes:
    return hashlib.sha256(f"{seed}:{uid}".encode()).digest()


def choose_holdout(uids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The held-out uids among `uids` (the kept ones): the lowest seeded hashes."""
    unique = sorted(set(uids))
    if len(unique) != len(uids):
        raise ValueError("holdout: the kept uids repeat; a uid must name one pair")
    ranked = sorted(unique, key=lambda u: _rank_key(seed, u))
    return set(ranked[: holdout_count(len(unique), fraction)])


def holdout_mask(uids: Sequence[str], keep: np.ndarray, p: HoldoutParams) -> np.ndarray:
    """Per row: kept by every step AND held out (never True for a dropped row)."""
    if len(uids) != len(keep):
        raise ValueError(f"holdout: {len(uids)} uids for {len(keep)} decisions")
    kept = [u for u, k in zip(uids, keep, strict=True) if k]
    held = choose_holdout(kept, p.fraction, p.seed)
    return np.array([bool(k) and u in held for u, k in zip(uids, keep, strict=True)], dtype=bool)


def write_uids(path: Path, uids: Sequence[str]) -> list[str]:
    """A sorted uid list as parquet (DataComp's subset form), written atomically."""
    import pyarrow.parquet as pq

    from tasks.io import atomic_write_bytes

    ordered = sorted(uids)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"uid": pa.array(ordered, pa.string())}), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return ordered
