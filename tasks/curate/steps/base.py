"""The one shape every step shares: rows in, a decision (keep, reason, score, reference) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.params import CurateParams


@dataclass
class StepResult:
    """keep[i] decides row i; reason[i] says why it was dropped (None when kept).

    `score` is the number the decision was made on (CLIP score, distance...), `ref` the uid or
    eval image a dropped row duplicates, `metrics` anything worth logging (thresholds...).
    """

    keep: np.ndarray
    reason: list[str | None]
    score: np.ndarray | None = None
    ref: list[str | None] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_reasons(cls, reasons: list[str | None], **kw: Any) -> StepResult:
        return cls(keep=np.array([r is None for r in reasons], dtype=bool), reason=reasons, **kw)


@dataclass
class StepContext:
    """What steps may need besides the rows: params, paths, lazily built shared objects."""

    params: CurateParams
    out_dir: Path
    n_entries: int = 0
    eval_features: pa.Table | None = None  # id, phash, image_emb of every eval image
    cache: dict[str, Any] = field(default_factory=dict)


def embeddings(rows: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(matrix of the rows that have an embedding, boolean mask of those rows)."""
    values = (
        rows.column(column).to_pylist() if column in rows.column_names else [None] * rows.num_rows
    )
    mask = np.array([v is not None for v in values], dtype=bool)
    dim = next((len(v) for v in values if v is not None), 0)
    mat = np.array([v for v in values if v is not None], dtype=np.float32).reshape(-1, dim)
    return mat, mask


def missing_embedding_reasons(mask: np.ndarray) -> list[str | None]:
    """Rows without an embedding are dropped by a model step WITH this reason, never silently."""
    return [None if m else "no_embedding" for m in mask]
