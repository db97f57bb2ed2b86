"""The one shape every step shares: declared inputs and params, `setup` once, rows in, a decision out.

A step names the prepared data it reads (`Input`); the stage prepares the union of what the
steps of a run declare, and nothing else. What a step builds for itself (a lookup table, an
index) it builds in `setup`, once per run; what it hands back (keep mask, reasons, scores,
artifacts such as entry counts or the effective t) travels in its StepResult, never in a
shared dict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa

from tasks.base import ParamsSection
from tasks.curate.params import CurateParams

if TYPE_CHECKING:
    from tasks.decontam.params import HashMatchParams
    from tasks.imaging.resize import ResizeParams

Input = Literal[
    "matches", "hashes", "embeddings", "eval_features", "target_embeddings", "pool_rows"
]
"""Prepared data a step may read:
- matches: `entry_ids` of every row against the MetaCLIP metadata (text checks always run);
- hashes: `image_sha256`, `phash`, `dhash` of every pool image;
- embeddings: `image_emb`, `text_emb` of every pool pair (needs `paths.clip_model`);
- eval_features: `StepContext.eval_features`, the eval images in the pool's form;
- target_embeddings: `StepContext.target_embeddings`, the target task's image embeddings.
- pool_rows: `StepContext.pool_rows`, EVERY prepared pool row (whatever earlier steps drop),
  for decisions taken over the whole pool (clip_score's DataComp top fraction).
"""

P = TypeVar("P", bound=ParamsSection | None)


@dataclass
class StepResult:
    """keep[i] decides row i; reason[i] says why it was dropped (None when kept).

    `score` is the number the decision was made on (CLIP score, distance...), `ref` the uid or
    eval image a dropped row duplicates, `metrics` scalars worth logging (thresholds, counts),
    `artifacts` anything else the report shows (tasks/curate/report.py FIGURES draws known kinds).
    """

    keep: np.ndarray
    reason: list[str | None]
    score: np.ndarray | None = None
    ref: list[str | None] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reasons(cls, reasons: list[str | None], **kw: Any) -> StepResult:
        return cls(keep=np.array([r is None for r in reasons], dtype=bool), reason=reasons, **kw)


@dataclass
class StepContext:
    """What steps may read besides the rows: the run's params, paths and the prepared side data."""

    params: CurateParams
    out_dir: Path
    n_entries: int = 0  # metadata entries (input `matches`)
    eval_features: pa.Table | None = None  # id, variant, phash, dhash, image_emb (eval_features)
    target_embeddings: np.ndarray | None = None  # L2-normalised rows (target_embeddings)
    crawl_resize: ResizeParams | None = None  # crawl's resize section the eval view used
    hash_match: HashMatchParams | None = None  # decontaminate's `match` section (eval_features)
    pool_rows: pa.Table | None = None  # every prepared pool row, not only survivors (pool_rows)


class Step(ABC, Generic[P]):
    """One curation step: name, declared inputs, its params section, `setup`, and the decision.

    Subclasses set `name` (a `StepName`), `params_model` (the section `CurateParams.<name>`,
    None without params) and `requires`; they override `inputs` when what they read depends on
    their params, and `setup` when they build something once per run.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[ParamsSection] | None] = None
    requires: ClassVar[frozenset[Input]] = frozenset()

    def __init__(self, params: P) -> None:
        self.params = params

    def inputs(self) -> frozenset[Input]:
        """The prepared data this step reads with its params."""
        return self.requires

    def setup(self, ctx: StepContext) -> None:  # noqa: B027 - a hook: most steps need nothing
        """Build once, before the first call, what every call needs."""

    @abstractmethod
    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        """Decide on the rows that reached the step (every earlier step kept them)."""


def embeddings(rows: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(matrix of the rows that have an embedding, boolean mask of those rows)."""
    values = (
        rows.column(column).to_pylist() if column in rows.column_names else [None] * rows.num_rows
    )
    mask = np.array([v is not None for v in values], dtype=bool)
    dim = next((len(v) for v in values if v is not None), 0)
    if dim == 0:  # no row has one (or no rows: a streamed block nothing reached)
        return np.zeros((0, 0), dtype=np.float32), mask
    mat = np.array([v for v in values if v is not None], dtype=np.float32).reshape(-1, dim)
    return mat, mask


def missing_embedding_reasons(mask: np.ndarray) -> list[str | None]:
    """Rows without an embedding are dropped by a model step WITH this reason, never silently."""
    return [None if m else "no_embedding" for m in mask]


class ReportStep(ABC):
    """Runs after the decisions and returns metrics; it never changes a keep mask.

    It reports on the decision step named `follows` (and runs only when that step is in the
    pipeline), receiving that step's instance so it can look at the data as the step did.
    """

    name: ClassVar[str]
    follows: ClassVar[str]
    requires: ClassVar[frozenset[Input]] = frozenset()

    def __init__(self, params: CurateParams) -> None:
        self.params = params

    def inputs(self) -> frozenset[Input]:
        """The prepared data this report reads."""
        return self.requires

    def setup(self, ctx: StepContext) -> None:  # noqa: B027 - a hook: most reports need nothing
        """Build once what the report needs."""

    @abstractmethod
    def __call__(self, rows: pa.Table, step: Step[Any], ctx: StepContext) -> dict[str, Any]:
        """Metrics about `step`'s work over every pool row."""
