"""Within-pool dedup: exact (sha256), perceptual (pHash + dHash Hamming), semantic (SemDeDup).

Rows are visited in uid order; the first of a group is kept and every later member records the
uid it duplicates, so a removal can always be checked by looking at its twin.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.params import PerceptualDedupParams
from tasks.curate.steps.base import Step, StepContext, StepResult
from tasks.decontam.hashing import hamming_pairs, hash_codes, hex_to_u64


class ExactDedup(Step[None]):
    """Same bytes (the crawl's sha256, else the stored image's): the first uid is kept."""

    name = "exact_dedup"
    requires = frozenset({"hashes"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        return exact_dedup(rows)


def exact_dedup(rows: pa.Table) -> StepResult:
    """Rows visited in uid order; later members of a sha256 group name the first as `ref`."""
    uids = rows.column("uid").to_pylist()
    pool_sha = (
        rows.column("sha256").to_pylist() if "sha256" in rows.column_names else [None] * len(uids)
    )
    img_sha = (
        rows.column("image_sha256").to_pylist()
        if "image_sha256" in rows.column_names
        else [None] * len(uids)
    )
    first: dict[str, str] = {}
    reasons: list[str | None] = [None] * len(uids)
    refs: list[str | None] = [None] * len(uids)
    for i in sorted(range(len(uids)), key=uids.__getitem__):
        digest = pool_sha[i] or img_sha[i]
        if digest is None:
            reasons[i] = "no_sha256"
        elif digest in first:
            reasons[i], refs[i] = "duplicate_sha256", first[digest]
        else:
            first[digest] = uids[i]
    return StepResult.from_reasons(reasons, ref=refs)


class PerceptualDedup(Step[PerceptualDedupParams]):
    """Two images are duplicates when BOTH pHash and dHash are within the Hamming threshold."""

    name = "perceptual_dedup"
    params_model = PerceptualDedupParams
    requires = frozenset({"hashes"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        return perceptual_dedup(rows, self.params.max_distance)


def perceptual_dedup(rows: pa.Table, d: int) -> StepResult:
    """Greedy in uid order: a row within `d` bits (pHash and dHash) of a kept row is dropped."""
    uids = rows.column("uid").to_pylist()
    ph, dh = rows.column("phash").to_pylist(), rows.column("dhash").to_pylist()
    n = len(uids)
    reasons: list[str | None] = [
        "no_image_hash" if ph[i] is None or dh[i] is None else None for i in range(n)
    ]
    refs: list[str | None] = [None] * n
    score = np.full(n, np.nan)
    ok = np.flatnonzero([r is None for r in reasons])
    if len(ok) < 2:
        return StepResult.from_reasons(reasons, ref=refs, score=score)
    order = ok[np.argsort([uids[i] for i in ok], kind="stable")]
    pc = hash_codes([ph[i] for i in order])
    a, b, dist = hamming_pairs(pc, pc, d)
    du = hex_to_u64([dh[i] for i in order])
    keep_pairs = (a < b) & (np.bitwise_count(du[a] ^ du[b]) <= d)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for x, y, z in zip(a[keep_pairs], b[keep_pairs], dist[keep_pairs], strict=True):
        neighbours.setdefault(int(x), []).append((int(y), int(z)))
    removed = np.zeros(len(order), dtype=bool)
    for x in range(len(order)):
        if removed[x]:
            continue
        for y, z in neighbours.get(x, []):
            if not removed[y]:
                removed[y] = True
                row = order[y]
                reasons[row], refs[row], score[row] = "duplicate_phash", uids[order[x]], z
    return StepResult.from_reasons(reasons, ref=refs, score=score)
