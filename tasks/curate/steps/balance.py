"""MetaCLIP balancing as a step: global counts over the rows that reached it, then t_min < t."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate import balancing as bal
from tasks.curate.params import BalanceParams
from tasks.curate.steps.base import Step, StepContext, StepResult


@dataclass(frozen=True)
class EntryCounts:
    """Artifact of the balance step: matches per metadata entry before / after, and the t used."""

    before: np.ndarray
    after: np.ndarray
    t: int


def write_match_parts(rows: pa.Table, out_dir: Path, rows_per_part: int) -> list[Path]:
    """Store (uid, entry_ids) of the rows to balance as parquet parts: the shards of the map steps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    paths = []
    for k, start in enumerate(range(0, max(rows.num_rows, 1), rows_per_part)):
        part = rows.select(["uid", "entry_ids"]).slice(start, rows_per_part)
        path = out_dir / f"part-{k:05d}.parquet"
        pq.write_table(part, path)
        paths.append(path)
    return paths


class Balance(Step[BalanceParams]):
    """MetaCLIP: global entry counts over the rows reaching the step, keep iff t_min < t."""

    name = "balance"
    params_model = BalanceParams
    requires = frozenset({"matches"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        if ctx.n_entries <= 0:
            raise ValueError(
                "balance: no metadata entries (set metadata.wordnet and/or metadata.extra)"
            )
        tmin, counts = _tmin(rows, ctx)
        p = self.params
        t = bal.find_t(tmin, p.target_size) if p.target_size else p.t
        keep = bal.keep_mask(tmin, t)
        after = bal.count_entries(rows.column("entry_ids").filter(pa.array(keep)), ctx.n_entries)
        reasons = [
            None if k else ("no_metadata_match" if np.isinf(v) else "balanced_out")
            for k, v in zip(keep, tmin, strict=True)
        ]
        metrics = {
            "balance_t": int(t),
            "entries_matched": int(np.count_nonzero(counts)),
            "entries_above_t": int(np.count_nonzero(counts > t)),
            "max_entry_count_before": int(counts.max(initial=0)),
            "max_entry_count_after": int(after.max(initial=0)),
        }
        return StepResult(
            keep=keep,
            reason=reasons,
            score=np.where(np.isinf(tmin), np.nan, tmin),
            metrics=metrics,
            artifacts={"entry_counts": EntryCounts(counts, after, int(t))},
        )


def _tmin(rows: pa.Table, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
    """(t_min per row in row order, global entry counts): map -> reduce -> map over parts."""
    p = ctx.params
    parts = write_match_parts(rows, ctx.out_dir / "matches", p.compute.rows_per_block)
    counts, tmin_paths = bal.balance_files(parts, ctx.out_dir / "balance", ctx.n_entries, p.seed)
    tmin_table = pa.concat_tables([pq.read_table(x) for x in tmin_paths])
    by_uid = dict(
        zip(tmin_table.column("uid").to_pylist(), tmin_table.column("tmin").to_numpy(), strict=True)
    )
    tmin = np.array([by_uid[u] for u in rows.column("uid").to_pylist()], dtype=np.float64)
    return tmin, counts
