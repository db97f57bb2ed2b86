"""The steps of curate's streamed decisions (tasks/curate/stream.py): how each one decides on
one block of pool rows, and what small array its global decision reduces to on the driver.

A step here is an adapter around the step class the in-memory path runs (tasks/curate/steps),
so both paths share the decision code:
- per-row steps (basic, text_based, uid_subset, decontaminate: each row against the small eval
  feature table in the context) decide each row from the row alone: the step object itself
  runs on every block, with nothing to reduce;
- exact_dedup reduces by hash partition: blocks write (sha256, uid, block, row) into partition
  files, one Ray task per partition picks the winner (the smallest uid, as the in-memory step
  visits rows in uid order) and writes the losers; the driver sees only file paths;
- clip_score with `fraction` reduces to the float32 CLIP score of every downloaded, embedded
  pool row (its scores are float32 cosines, so float32 loses nothing), the driver takes
  DataComp's rank in place;
- perceptual_dedup reduces by pHash band partition (d + 1 bands: pigeonhole), pairs listed
  per partition, the uid-order greedy in one Ray task over the pairs' rows only
  (tasks/curate/streamphash.py);
  with `caption` raw_else_synthetic or both the block decisions are the in-memory step's, and
  the shard writer reads which rows their synthetic caption kept back from the block ledgers
  (tasks/curate/streamwrite.py);
- perceptual_dedup with max_distance 64 (every pair of hashed rows within it) reduces to the
  smallest uid among the hashed rows reaching it and its pHash: every other hashed row is its
  duplicate, as the in-memory greedy finds;
- balance reduces to MetaCLIP's int64 count per entry (summed on the driver) and back; with
  `target_size`, t is the in-memory `find_t` (floor of the target_size-th smallest finite
  t_min, plus one) found exactly by two rounds of Ray tasks over per-block integer histograms
  of floor(t_min) (65,536 buckets, then the one bucket holding it), never the rows' t_min;
- semantic_dedup: k-means fitted in a Ray task on a seeded sample, clusters partitioned to
  files, one Ray task per cluster (tasks/curate/streamsemdedup.py);
- image_based: k-means fitted in a Ray task in uid order, nearest centroid per block
  (tasks/curate/streamimage.py).
Every step and param streams; a report step without a streamed form raises
NotImplementedError naming it (tasks/curate/streamreport.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.curate import balancing as bal
from tasks.curate.steps.base import Step, StepContext, StepResult
from tasks.curate.steps.clip_score import ClipScore, downloaded_pool_scores
from tasks.curate.streambase import Streamed
from tasks.curate.streamimage import ImageBasedStreamed
from tasks.curate.streamphash import PerceptualDedupStreamed
from tasks.curate.streamsemdedup import SemanticDedupStreamed


class PerRow(Streamed):
    """basic, text_based, uid_subset: a row's decision reads that row only."""

    CONSTANT = frozenset({"uid_subset_listed"})  # metrics every block reports whole

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        self.sums: dict[str, Any] = {}

    def fold(self, part: Any) -> None:
        for key, value in part.items():
            self.sums[key] = value if key in self.CONSTANT else self.sums.get(key, 0) + value

    def finish(self) -> dict[str, Any]:
        return dict(self.sums)


def _partition(digests: Sequence[str], n: int) -> np.ndarray:
    """Partition of each digest: a 64-bit blake2b of it modulo n (any text, not only hex)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little") % n
            for d in digests
        ),
        dtype=np.int64,
        count=len(digests),
    )


def _digests(rows: pa.Table) -> pa.Array:
    """The crawl's sha256, else the stored image's (exact_dedup's key), null when neither."""
    n = rows.num_rows
    pool = rows.column("sha256") if "sha256" in rows.column_names else pa.nulls(n, pa.string())
    img = (
        rows.column("image_sha256")
        if "image_sha256" in rows.column_names
        else pa.nulls(n, pa.string())
    )
    return pc.coalesce(pool.cast(pa.string()), img.cast(pa.string())).combine_chunks()


class ExactDedupStreamed(Streamed):
    """Same bytes, first uid kept: winners found per hash partition by Ray tasks."""

    global_decision = True

    ROWS_PER_PARTITION = 500_000  # rows one reduce task sorts (a few hundred MB at most)

    def __init__(self, step: Step[Any], partitions: int = 16) -> None:
        super().__init__(step)
        self.partitions = partitions

    def plan(self, total_rows: int) -> None:
        self.partitions = min(4096, max(16, -(-total_rows // self.ROWS_PER_PARTITION)))

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        digest = _digests(rows)
        valid = np.asarray(digest.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        idx = np.flatnonzero(valid)
        if idx.size == 0:
            return 0
        table = pa.table(
            {
                "digest": digest.take(pa.array(idx)),
                "uid": rows.column("uid").take(pa.array(idx)),
                "block": pa.array(np.full(idx.size, block, np.int32)),
                "row": pa.array(idx.astype(np.int32)),
            }
        )
        part = _partition(table.column("digest").to_pylist(), self.partitions)
        for p in np.unique(part):
            folder = scratch / "exact_dedup" / f"p{p:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pa.array(part == p)), folder / f"b{block:07d}.parquet")
        return int(idx.size)

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        import ray

        folders = sorted((scratch / "exact_dedup").glob("p*"))
        task = ray.remote(_exact_winners).options(num_cpus=ctx.params.compute.cpus_per_worker)
        ray.get(
            [
                task.remote(str(f), str(scratch / "exact_dedup" / f"{f.name}.losers"))
                for f in folders
            ]
        )

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        import pyarrow.dataset as ds

        digest = _digests(rows)
        reasons: list[str | None] = [
            None if v else "no_sha256" for v in digest.is_valid().to_pylist()
        ]
        refs: list[str | None] = [None] * rows.num_rows
        files = sorted(str(f) for f in (scratch / "exact_dedup").glob("*.losers"))
        if files:
            losers = ds.dataset(files, format="parquet").to_table(filter=ds.field("block") == block)
            for row, ref in zip(
                losers.column("row").to_pylist(), losers.column("ref").to_pylist(), strict=True
            ):
                reasons[row], refs[row] = "duplicate_sha256", ref
        return StepResult.from_reasons(reasons, ref=refs), {}


def _exact_winners(folder: str, out: str) -> int:
    """Reduce of one partition: in each sha256 group the smallest uid wins; the others are
    written as (block, row, ref = the winner), sorted by block. Returns the losers."""
    table = pq.read_table(folder).sort_by([("digest", "ascending"), ("uid", "ascending")])
    n = table.num_rows
    digest = table.column("digest").combine_chunks()
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = np.asarray(
            pc.not_equal(digest.slice(1), digest.slice(0, n - 1)).to_numpy(zero_copy_only=False),
            dtype=bool,
        )
    winner = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    lose = np.flatnonzero(~first)
    losers = pa.table(
        {
            "block": table.column("block").take(pa.array(lose)),
            "row": table.column("row").take(pa.array(lose)),
            "ref": table.column("uid").take(pa.array(winner[lose])),
        }
    ).sort_by("block")
    pq.write_table(losers, out, row_group_size=65_536)
    return int(lose.size)


class ClipScoreStreamed(Streamed):
    """DataComp's CLIP score: with `fraction`, the threshold is the rank over every downloaded,
    embedded pool row, reduced from float32 scores; the block decisions then use it."""

    whole_pool = True

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        self.global_decision = step.params.fraction is not None
        self.threshold: float | None = step.params.threshold
        self.pool_n: int | None = None
        self.buffer: np.ndarray | None = None  # driver only: every score, float32
        self.filled = 0
        self.sums: dict[str, int] = {}

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        return downloaded_pool_scores(rows).astype(np.float32)

    def absorb(self, part: Any, total_rows: int) -> None:
        if self.buffer is None:  # at most one score per pool row: allocated once
            self.buffer = np.empty(total_rows, dtype=np.float32)
        self.buffer[self.filled : self.filled + part.size] = part
        self.filled += int(part.size)

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        """DataComp's threshold from the float32 scores of every block, partitioned in place."""
        p = self.step.params
        scores = self.buffer[: self.filled] if self.buffer is not None else np.zeros(0, np.float32)
        n = int(scores.size)
        self.pool_n = n
        if n == 0:
            self.threshold = float("inf")
        else:
            rank = n - 1 - min(int(n * p.fraction), n - 1)  # ascending index of DataComp's rank
            scores.partition(rank)
            self.threshold = float(scores[rank])
        self.buffer = None  # the adapter travels to every block task: without the scores

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        update: dict[str, Any] = {"fraction": None, "threshold": self.threshold}
        if rows.num_rows == 0:  # a block nothing reached: nothing to rescue (the in-memory step
            update["caption"] = "raw"  # is never called without rows, and needs some for it)
        fixed = self.step.params.model_copy(update=update)
        result = ClipScore(fixed)(rows, ctx)
        # caption choice and score arrays are per-row objects, not kept: the shard writer reads
        # the caption choice back from the block's ledger (tasks/curate/streamwrite.py)
        result.artifacts = {}
        return result, result.metrics

    def fold(self, part: Any) -> None:
        for key in (
            "clip_score_reaching",
            "clip_score_passed",
            "clip_score_kept_by_synthetic",
            "clip_score_synthetic_scored",
        ):
            self.sums[key] = self.sums.get(key, 0) + int(part[key])

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clip_score_threshold": self.threshold, **self.sums}
        if self.pool_n is not None:
            out["clip_score_pool_n"] = self.pool_n
        return out


class BalanceStreamed(Streamed):
    """MetaCLIP: int64 entry counts over the rows reaching the step, summed on the driver; each
    block then computes t_min with the same coins as the in-memory step (tasks/curate/balancing)."""

    global_decision = True

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        self.counts: np.ndarray | None = None
        self.after: np.ndarray | None = None
        self.t = int(step.params.t)  # balance.t, or the t found for balance.target_size

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        if ctx.n_entries <= 0:
            raise ValueError(
                "balance: no metadata entries (set metadata.wordnet and/or metadata.extra)"
            )
        if self.step.params.target_size:  # t_min needs the global counts: kept for reduce
            folder = scratch / "balance"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows.select(["uid", "entry_ids"]), folder / f"b{block:07d}.parquet")
        return bal.count_entries(rows.column("entry_ids"), ctx.n_entries)

    def absorb(self, part: Any, total_rows: int) -> None:
        self.counts = part.copy() if self.counts is None else self.counts + part

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        if self.counts is None:
            self.counts = np.zeros(ctx.n_entries, dtype=np.int64)
        target = self.step.params.target_size
        if target:
            files = sorted(str(f) for f in (scratch / "balance").glob("b*.parquet"))
            self.t = stream_find_t(files, self.counts, ctx.params.seed, int(target), ctx)

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        assert self.counts is not None
        t = self.t
        tmin = bal.pair_tmin(
            rows.column("uid"), rows.column("entry_ids"), self.counts, ctx.params.seed
        )
        keep = bal.keep_mask(tmin, t)
        after = bal.count_entries(rows.column("entry_ids").filter(pa.array(keep)), ctx.n_entries)
        reasons: list[str | None] = [
            None if k else ("no_metadata_match" if np.isinf(v) else "balanced_out")
            for k, v in zip(keep, tmin, strict=True)
        ]
        result = StepResult(keep=keep, reason=reasons, score=np.where(np.isinf(tmin), np.nan, tmin))
        return result, after

    def fold(self, part: Any) -> None:
        self.after = part.copy() if self.after is None else self.after + part

    def finish(self) -> dict[str, Any]:
        from tasks.curate.steps.balance import EntryCounts

        counts = self.counts if self.counts is not None else np.zeros(0, np.int64)
        after = self.after if self.after is not None else np.zeros_like(counts)
        t = self.t
        self.artifact = EntryCounts(counts, after, t)
        return {
            "balance_t": t,
            "entries_matched": int(np.count_nonzero(counts)),
            "entries_above_t": int(np.count_nonzero(counts > t)),
            "max_entry_count_before": int(counts.max(initial=0)),
            "max_entry_count_after": int(after.max(initial=0)),
        }


BUCKETS = 65_536  # histogram buckets of floor(t_min) per round of stream_find_t


def _floor_tmin(path: str, counts: np.ndarray, seed: int, width: int) -> np.ndarray:
    """Round 1 (a Ray task per block): floor(t_min) of the block's rows reaching balance, the
    finite ones, saved beside its rows; returns their histogram in BUCKETS buckets of `width`."""
    table = pq.read_table(path)
    tmin = bal.pair_tmin(table.column("uid"), table.column("entry_ids"), counts, seed)
    floors = np.floor(tmin[np.isfinite(tmin)]).astype(np.int64)
    np.save(path + ".floor.npy", floors)
    return np.bincount(floors // width, minlength=BUCKETS).astype(np.int64)


def _bucket_floors(path: str, bucket: int, width: int) -> np.ndarray:
    """Round 2 (a Ray task per block): the histogram of floor(t_min) inside one bucket."""
    floors = np.load(path + ".floor.npy")
    inside = floors[floors // width == bucket] - bucket * width
    return np.bincount(inside, minlength=width).astype(np.int64)


def stream_find_t(
    files: list[str], counts: np.ndarray, seed: int, target_size: int, ctx: StepContext
) -> int:
    """tasks/curate/balancing.py find_t over per-block (uid, entry_ids) files, exactly: the
    target_size-th smallest floor(t_min) (floor keeps the order, so it is the floor of the
    target_size-th smallest t_min) from integer histograms: t_min < max count, so 65,536
    buckets of width ceil(max count / 65,536), then the one bucket holding it, per integer.
    The driver holds two int64 arrays of at most 65,536 (or bucket width) entries."""
    import ray

    cpus = ctx.params.compute.cpus_per_worker
    width = max(1, -(-int(counts.max(initial=0)) // BUCKETS))
    ref = ray.put(counts)
    first = ray.remote(_floor_tmin).options(num_cpus=cpus)
    hist = np.zeros(BUCKETS, dtype=np.int64)
    for part in ray.get([first.remote(f, ref, seed, width) for f in files]):
        hist += part
    finite = int(hist.sum())
    if target_size > finite:
        raise ValueError(
            f"target size {target_size} exceeds the {finite} pairs that match any entry"
        )
    below = np.cumsum(hist)
    bucket = int(np.searchsorted(below, target_size, side="left"))
    rank = target_size - (int(below[bucket - 1]) if bucket else 0)  # 1-based, in the bucket
    if width == 1:
        floor = bucket
    else:
        second = ray.remote(_bucket_floors).options(num_cpus=cpus)
        inner = np.zeros(width, dtype=np.int64)
        for part in ray.get([second.remote(f, bucket, width) for f in files]):
            inner += part
        floor = bucket * width + int(np.searchsorted(np.cumsum(inner), rank, side="left"))
    return max(1, floor + 1)


STREAMED: dict[str, type[Streamed]] = {
    "basic": PerRow,
    "text_based": PerRow,
    "uid_subset": PerRow,
    "decontaminate": PerRow,
    "exact_dedup": ExactDedupStreamed,
    "perceptual_dedup": PerceptualDedupStreamed,
    "semantic_dedup": SemanticDedupStreamed,
    "image_based": ImageBasedStreamed,
    "clip_score": ClipScoreStreamed,
    "balance": BalanceStreamed,
}


def streamed(step: Step[Any]) -> Streamed:
    """The streamed form of `step`; a step with no streamed form is a clear error naming it."""
    cls = STREAMED.get(step.name)
    if cls is None:
        raise NotImplementedError(
            f"curate step {step.name!r} has no streamed form yet (streamed: {sorted(STREAMED)}); "
            "drop it from `steps` or run curate in memory"
        )
    return cls(step)


def holdout_keys(uids: Sequence[str], seed: int) -> np.ndarray:
    """The first 8 bytes (big-endian) of holdout's rank key sha256("<seed>:<uid>"): the same
    order as the full keys unless two prefixes tie (the streamed holdout checks for that)."""
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(f"{seed}:{u}".encode()).digest()[:8], "big") for u in uids),
        dtype=np.uint64,
        count=len(uids),
    )
