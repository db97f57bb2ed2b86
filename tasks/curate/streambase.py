"""The shape of one step on curate's streamed path (tasks/curate/stream.py): map per block,
reduce on the driver (or in Ray tasks it starts), decide per block."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from tasks.curate.steps.base import Step, StepContext, StepResult


class Streamed:
    """One step as the streamed path runs it: `collect` per block (map), `reduce` on the driver,
    `decide` per block. `whole_pool`: `collect` reads every pool row, not only the rows reaching
    the step, so it runs in the first pass. `finish` turns the per-block metric parts into the
    step's metrics (the ones the in-memory step reports)."""

    global_decision: bool = False
    whole_pool: ClassVar[bool] = False
    artifact: Any = None  # what the report shows (balance: EntryCounts), set by finish

    def __init__(self, step: Step[Any]) -> None:
        self.step = step
        self.name = step.name

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        """Map (a Ray task): what this block adds to the global decision (a small array, or
        files written under scratch)."""
        return None

    def plan(self, total_rows: int) -> None:
        """Driver, before the first pass: size what depends on the pool's rows."""

    def absorb(self, part: Any, total_rows: int) -> None:
        """Driver: fold one block's collected part in (as it arrives: parts are never kept)."""

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        """Driver: the global decision from what was absorbed; afterwards `decide` may run."""

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        """The step's decision on the block's rows reaching it, and a metric part."""
        result = self.step(rows, ctx)
        return result, result.metrics

    def fold(self, part: Any) -> None:
        """Driver: fold one block's metric part in."""

    def finish(self) -> dict[str, Any]:
        """The step's metrics from the folded metric parts."""
        return {}
