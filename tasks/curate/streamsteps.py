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
- balance reduces to MetaCLIP's int64 count per entry (summed on the driver) and back.
- semantic_dedup: k-means fitted in a Ray task on a seeded sample, clusters partitioned to
  files, one Ray task per cluster (tasks/curate/streamsemdedup.py);
Not streamed (a NotImplementedError names them): image_based,
clip_score.caption other than raw, balance.target_size, perceptual_dedup.max_distance >= 64.
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
        if step.params.caption != "raw":
            raise NotImplementedError(
                f"clip_score.caption={step.params.caption!r} is not streamed (its caption "
                "choice is a set of uids for the shard writer); use caption: raw or run curate "
                "in memory"
            )
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
        fixed = self.step.params.model_copy(update={"fraction": None, "threshold": self.threshold})
        result = ClipScore(fixed)(rows, ctx)
        result.artifacts = {}  # caption choice and score arrays: per-row objects, not streamed
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
        if step.params.target_size:
            raise NotImplementedError(
                "balance.target_size is not streamed (its t is a quantile of t_min over every "
                "row); set balance.t or run curate in memory"
            )
        self.counts: np.ndarray | None = None
        self.after: np.ndarray | None = None

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        if ctx.n_entries <= 0:
            raise ValueError(
                "balance: no metadata entries (set metadata.wordnet and/or metadata.extra)"
            )
        return bal.count_entries(rows.column("entry_ids"), ctx.n_entries)

    def absorb(self, part: Any, total_rows: int) -> None:
        self.counts = part.copy() if self.counts is None else self.counts + part

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        if self.counts is None:
            self.counts = np.zeros(ctx.n_entries, dtype=np.int64)

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        assert self.counts is not None
        t = int(self.step.params.t)
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
        t = int(self.step.params.t)
        self.artifact = EntryCounts(counts, after, t)
        return {
            "balance_t": t,
            "entries_matched": int(np.count_nonzero(counts)),
            "entries_above_t": int(np.count_nonzero(counts > t)),
            "max_entry_count_before": int(counts.max(initial=0)),
            "max_entry_count_after": int(after.max(initial=0)),
        }


STREAMED: dict[str, type[Streamed]] = {
    "basic": PerRow,
    "text_based": PerRow,
    "uid_subset": PerRow,
    "decontaminate": PerRow,
    "exact_dedup": ExactDedupStreamed,
    "perceptual_dedup": PerceptualDedupStreamed,
    "semantic_dedup": SemanticDedupStreamed,
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
