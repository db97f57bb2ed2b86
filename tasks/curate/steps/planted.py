"""Report step: decontamination quality on the sample's planted copies (recall, look-alikes).

It runs after every decision, over EVERY pool image that passed the input checks (not only the
rows that reached decontamination), so earlier filters cannot hide misses; it never changes a
keep mask, and it writes no pool column.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.steps.base import ReportStep, Step, StepContext


class PlantedQA(ReportStep):
    """Recall / false positives of `decontaminate` on the copies the sample stage planted."""

    name = "planted_qa"
    follows = "decontaminate"
    requires = frozenset({"hashes", "eval_features"})

    def __call__(self, rows: pa.Table, step: Step[Any], ctx: StepContext) -> dict[str, Any]:
        from tasks.curate.apply import input_reasons
        from tasks.decontam.planted import planted_recall
        from tasks.io.paths import resolve_path

        path = resolve_path(self.params.planted_qa.path)
        if path is None or not path.exists() or ctx.eval_features is None:
            return {}
        ok = np.flatnonzero([r is None for r in input_reasons(rows)])
        sub = rows.take(pa.array(ok, pa.int64()))
        res = step(sub, ctx)
        refs = res.ref or [None] * sub.num_rows
        return planted_recall(
            path,
            sub.column("url").to_pylist(),
            res.reason,
            refs,
            distances=self._flagged_distances(sub, res.reason, refs, ctx),
            lookalike_mad=self.params.planted_qa.lookalike_mad,
        )

    def _flagged_distances(
        self, rows: pa.Table, reasons: list[str | None], refs: list[str | None], ctx: StepContext
    ) -> list[float | None]:
        """Pixel distance of each flagged row's image to the eval image it was matched to (None
        for rows not flagged): what tells look-alikes from false positives in the metrics."""
        from tasks.curate.evalsets import eval_view
        from tasks.curate.features import existing_shard
        from tasks.decontam.views import flagged_distances
        from tasks.io.paths import resolve_path

        p = self.params
        uids, shards = rows.column("uid").to_pylist(), rows.column("shard").to_pylist()
        flagged = []
        for i, (r, ref) in enumerate(zip(reasons, refs, strict=True)):
            if r and r.startswith("eval_") and ref:
                path = existing_shard(resolve_path(p.paths.crawl_dir), shards[i])
                if path is not None:
                    flagged.append((i, uids[i], path, str(ref)))
        assert ctx.hash_match is not None, "eval_features were prepared with the match section"
        view = eval_view(ctx.hash_match, ctx.crawl_resize)
        return flagged_distances(rows.num_rows, flagged, resolve_path(p.paths.eval_dir), view)
