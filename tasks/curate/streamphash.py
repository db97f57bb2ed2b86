"""perceptual_dedup on curate's streamed path (tasks/curate/stream.py): the in-memory step's
uid-order greedy (tasks/curate/steps/dedup.py) with its pairs found by pHash band partition.

Two hashes within d bits agree on at least one of d + 1 disjoint bit ranges (pigeonhole), so
blocks write each hashed row under its d + 1 band values into hash partitions; a Ray task per
partition lists the pairs within both thresholds among rows sharing a band value; one Ray task
runs the greedy over the pairs only (a row in no pair is never dropped) and writes the losers.

max_distance 64 (the most the params allow) puts every pair of 64-bit hashes within reach, so
the greedy keeps the smallest uid among the hashed rows and drops every other as its duplicate
(score: their pHash distance): the blocks reduce to that one (uid, pHash), no bands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.curate.steps.base import Step, StepContext, StepResult
from tasks.curate.streambase import Streamed

ROWS_PER_PARTITION = 500_000  # band rows one pair-listing task reads


def _bands(d: int) -> list[tuple[int, int]]:
    """(shift, mask) of `d + 1` disjoint bit ranges of a 64-bit hash: two hashes within `d`
    bits agree on at least one range (pigeonhole), so equal band values find every pair."""
    if d >= 64:
        raise ValueError(f"perceptual_dedup: {d + 1} disjoint bands of a 64-bit hash need d < 64")
    cuts = np.linspace(0, 64, d + 2).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


class PerceptualDedupStreamed(Streamed):
    """pHash AND dHash within `max_distance`, greedy in uid order, as the in-memory step: blocks
    write each hashed row under d + 1 pHash band values into hash partitions; a Ray task per
    partition lists the pairs within the thresholds among rows sharing a band value; one Ray
    task runs the greedy over the pairs only (rows in no pair are kept) and writes the losers."""

    global_decision = True

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        d = int(step.params.max_distance)
        self.everything = d >= 64  # every pair within d: the smallest hashed uid wins all
        self.bands = [] if self.everything else _bands(d)
        self.partitions = 16
        self.first: tuple[str, int] | None = None  # everything: (smallest hashed uid, its pHash)

    def plan(self, total_rows: int) -> None:
        per = ROWS_PER_PARTITION
        self.partitions = min(4096, max(16, -(-total_rows * max(1, len(self.bands)) // per)))

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        from tasks.decontam.hashing import hex_to_u64

        ph, dh = rows.column("phash"), rows.column("dhash")
        ok = np.asarray(pc.and_(ph.is_valid(), dh.is_valid()).to_numpy(zero_copy_only=False))
        idx = np.flatnonzero(ok)
        if self.everything:  # the block's smallest hashed uid and its pHash
            if idx.size == 0:
                return None
            uids = rows.column("uid").take(pa.array(idx)).to_pylist()
            i = min(range(len(uids)), key=uids.__getitem__)
            return uids[i], int(hex_to_u64([ph[int(idx[i])].as_py()])[0])
        if idx.size == 0:
            return 0
        take = pa.array(idx)
        phv = hex_to_u64(ph.take(take).to_pylist())
        dhv = hex_to_u64(dh.take(take).to_pylist())
        uid = rows.column("uid").take(take)
        parts = []
        for b, (shift, mask) in enumerate(self.bands):
            value = (phv >> np.uint64(shift)) & np.uint64(mask)
            key = (value * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b)) % np.uint64(
                self.partitions
            )
            parts.append((np.full(idx.size, b, np.int8), value, key.astype(np.int64)))
        table = pa.table(
            {
                "band": np.concatenate([p[0] for p in parts]),
                "value": np.concatenate([p[1] for p in parts]),
                "ph": np.tile(phv, len(parts)),
                "dh": np.tile(dhv, len(parts)),
                "uid": pa.concat_arrays([uid.combine_chunks()] * len(parts)),
                "block": np.full(idx.size * len(parts), block, np.int32),
                "row": np.tile(idx.astype(np.int32), len(parts)),
            }
        )
        key = np.concatenate([p[2] for p in parts])
        for p in np.unique(key):
            folder = scratch / "perceptual_dedup" / f"p{p:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pa.array(key == p)), folder / f"b{block:07d}.parquet")
        return int(idx.size)

    def absorb(self, part: Any, total_rows: int) -> None:
        if self.everything and part is not None and (self.first is None or part < self.first):
            self.first = part

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        import ray

        if self.everything:  # nothing to reduce beyond `first`
            return
        d = int(self.step.params.max_distance)
        cpus = ctx.params.compute.cpus_per_worker
        base = scratch / "perceptual_dedup"
        pairs = ray.remote(_phash_pairs).options(num_cpus=cpus)
        ray.get([pairs.remote(str(f), str(base / f"{f.name}.pairs"), d) for f in base.glob("p*")])
        greedy = ray.remote(_phash_greedy).options(num_cpus=cpus)
        ray.get(greedy.remote(str(base), str(base / "all.losers")))

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        import pyarrow.dataset as ds

        ph, dh = rows.column("phash").to_pylist(), rows.column("dhash").to_pylist()
        reasons: list[str | None] = [
            "no_image_hash" if a is None or b is None else None for a, b in zip(ph, dh, strict=True)
        ]
        refs: list[str | None] = [None] * rows.num_rows
        score = np.full(rows.num_rows, np.nan)
        path = scratch / "perceptual_dedup" / "all.losers"
        if self.everything:
            self._decide_everything(rows, reasons, refs, score)
        elif path.exists():
            losers = ds.dataset(str(path), format="parquet").to_table(
                filter=ds.field("block") == block
            )
            for row, ref, dist in zip(
                *(losers.column(c).to_pylist() for c in ("row", "ref", "dist")), strict=True
            ):
                reasons[row], refs[row], score[row] = "duplicate_phash", ref, dist
        return StepResult.from_reasons(reasons, ref=refs, score=score), {}

    def _decide_everything(
        self, rows: pa.Table, reasons: list[str | None], refs: list[str | None], score: np.ndarray
    ) -> None:
        """max_distance 64: every hashed row but the smallest uid duplicates that one (the
        in-memory greedy's first row removes all others; a lone hashed row stays)."""
        from tasks.decontam.hashing import hex_to_u64

        if self.first is None:
            return
        winner, code = self.first
        ph, uids = rows.column("phash").to_pylist(), rows.column("uid").to_pylist()
        for i, (reason, uid) in enumerate(zip(reasons, uids, strict=True)):
            if reason is None and uid != winner:
                dist = int(np.bitwise_count(hex_to_u64([ph[i]])[0] ^ np.uint64(code)))
                reasons[i], refs[i], score[i] = "duplicate_phash", winner, dist


PAIR_COLUMNS = ("a", "b", "dist", "b_block", "b_row")


def _phash_pairs(folder: str, out: str, d: int) -> int:
    """One partition: every pair (uid a < uid b) sharing a band value whose pHash and dHash are
    both within `d` bits; a pair found under several bands is written once per band."""
    table = pq.read_table(folder).sort_by([("band", "ascending"), ("value", "ascending")])
    band = table.column("band").to_numpy()
    value = table.column("value").to_numpy()
    ph, dh = table.column("ph").to_numpy(), table.column("dh").to_numpy()
    uid = np.asarray(table.column("uid").to_pylist(), dtype=object)
    block, row = table.column("block").to_numpy(), table.column("row").to_numpy()
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (value[1:] != value[:-1])])
    ends = np.r_[starts[1:], len(band)]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - s < 2:
            continue
        for lo in range(s, e, 2048):  # bounded blocks of a big group's pairs
            i = np.arange(lo, min(lo + 2048, e))
            j = np.arange(s, e)
            dp = np.bitwise_count(ph[i][:, None] ^ ph[j][None, :])
            dd = np.bitwise_count(dh[i][:, None] ^ dh[j][None, :])
            a, b = np.nonzero((dp <= d) & (dd <= d) & (uid[i][:, None] < uid[j][None, :]))
            found.append((i[a], j[b], dp[a, b]))
    ia = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
    ib = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
    dist = np.concatenate([f[2] for f in found]) if found else np.zeros(0, np.int64)
    pairs = pa.table(
        {
            "a": pa.array(uid[ia].tolist(), pa.string()),
            "b": pa.array(uid[ib].tolist(), pa.string()),
            "dist": pa.array(dist.astype(np.int64)),
            "b_block": pa.array(block[ib].astype(np.int32)),
            "b_row": pa.array(row[ib].astype(np.int32)),
        }
    )
    pq.write_table(pairs, out)
    return pairs.num_rows


def _phash_greedy(folder: str, out: str) -> int:
    """The in-memory step's greedy over the pairs: in uid order, a row not yet removed removes
    every later neighbour not yet removed (ref = it, score = pHash distance). Rows in no pair
    are never removed, so only the pairs' rows are visited. Writes (block, row, ref, dist)."""
    files = sorted(Path(folder).glob("*.pairs"))
    empty = pa.table({c: pa.array([], pa.string()) for c in ("a", "b")})
    pairs = pa.concat_tables([pq.read_table(f) for f in files]) if files else empty
    losers: dict[str, Any] = {"block": [], "row": [], "ref": [], "dist": []}
    if pairs.num_rows:
        cols = ("dist", "b_block", "b_row")
        pairs = (
            pairs.group_by(["a", "b"])
            .aggregate([(c, "min") for c in cols])
            .select(["a", "b", *[f"{c}_min" for c in cols]])
            .rename_columns(["a", "b", *cols])
        )
        pairs = pairs.sort_by([("a", "ascending"), ("b", "ascending")])
        a, b = pairs.column("a").to_pylist(), pairs.column("b").to_pylist()
        where = dict(
            zip(
                b,
                zip(
                    pairs.column("b_block").to_pylist(),
                    pairs.column("b_row").to_pylist(),
                    strict=True,
                ),
                strict=True,
            )
        )
        dist = pairs.column("dist").to_pylist()
        removed: set[str] = set()
        for x, y, z in zip(a, b, dist, strict=True):  # sorted by a: x visited in uid order
            if x in removed or y in removed:
                continue
            removed.add(y)
            blk, row = where[y]
            for key, v in (("block", blk), ("row", row), ("ref", x), ("dist", z)):
                losers[key].append(v)
    table = pa.table(
        {
            "block": pa.array(losers["block"], pa.int32()),
            "row": pa.array(losers["row"], pa.int32()),
            "ref": pa.array(losers["ref"], pa.string()),
            "dist": pa.array(losers["dist"], pa.float64()),
        }
    ).sort_by("block")
    pq.write_table(table, out, row_group_size=65_536)
    return table.num_rows
