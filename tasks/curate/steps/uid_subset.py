"""Apply an existing subset (a DataComp uid file, or our own uid list) to this pool.

A researcher reproducing a published subset (a DataComp baseline's `.npy`, another run's
`subset_uids.parquet`) keeps exactly the pool rows it lists; the rest are dropped with the reason
`not_in_uid_subset`, so the decision ledger shows what the file excluded like any other step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.formats import in_uid_set, read_uid_file
from tasks.curate.params import UidSubsetParams
from tasks.curate.steps.base import Step, StepContext, StepResult
from tasks.io.paths import resolve_path


class UidSubset(Step[UidSubsetParams]):
    """Keep the rows whose uid the file lists (DataComp's conversion of hex uids to u8 pairs)."""

    name = "uid_subset"
    params_model = UidSubsetParams

    def setup(self, ctx: StepContext) -> None:
        assert self.params.path is not None  # UidSubsetParams.unusable refuses None in `steps`
        self.subset = read_uid_file(resolve_path(self.params.path))

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        keep = in_uid_set(rows.column("uid").to_pylist(), self.subset)
        reasons = [None if k else "not_in_uid_subset" for k in keep]
        return StepResult(
            keep=np.asarray(keep, dtype=bool),
            reason=reasons,
            metrics={
                "uid_subset_listed": int(self.subset.size),
                "uid_subset_found": int(keep.sum()),
            },
        )
