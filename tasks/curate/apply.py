"""Apply the steps in order over the surviving rows; record every decision as pool columns."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.steps.base import Step, StepContext, StepResult


@dataclass
class Outcome:
    """Per-row final decision plus the per-step columns and the funnel (rows left after each step).

    `metrics` merges every step's metrics; `artifacts` keeps each step's artifacts by step name.
    """

    keep: np.ndarray
    reason: list[str]
    columns: dict[str, pa.Array] = field(default_factory=dict)
    funnel: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


def input_reasons(rows: pa.Table) -> list[str | None]:
    """The implicit first step: failed downloads, bad texts and unreadable images leave with their reason."""
    cols = rows.column_names
    status = rows.column("status").to_pylist() if "status" in cols else [None] * rows.num_rows
    text_r = (
        rows.column("text_reason").to_pylist() if "text_reason" in cols else [None] * rows.num_rows
    )
    image_r = (
        rows.column("image_reason").to_pylist()
        if "image_reason" in cols
        else [None] * rows.num_rows
    )
    out: list[str | None] = []
    for s, t, i in zip(status, text_r, image_r, strict=True):
        if s not in (None, "success"):
            out.append(f"download_{s}")
        else:
            out.append(t or i)
    return out


def _scatter(n: int, idx: np.ndarray, values: Any, typ: pa.DataType) -> pa.Array:
    full: list[Any] = [None] * n
    vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
    for i, v in zip(idx.tolist(), vals, strict=True):
        full[i] = None if isinstance(v, float) and np.isnan(v) else v
    return pa.array(full, typ)


def apply_steps(rows: pa.Table, steps: list[Step[Any]], ctx: StepContext) -> Outcome:
    """Each step decides on the rows every earlier step kept; its columns cover only those."""
    n = rows.num_rows
    first = input_reasons(rows)
    keep = np.array([r is None for r in first], dtype=bool)
    reason: list[str] = ["kept" if r is None else f"input:{r}" for r in first]
    out = Outcome(keep=keep, reason=reason)
    out.funnel.append(
        {"step": "input", "left": int(keep.sum()), "dropped": dict(Counter(r for r in first if r))}
    )
    out.columns["curate_input_reason"] = pa.array(first, pa.string())
    for step in steps:
        name = step.name
        idx = np.flatnonzero(keep)
        result: StepResult = step(rows.take(pa.array(idx, pa.int64())), ctx)
        if len(result.keep) != len(idx):
            raise RuntimeError(
                f"step {name} returned {len(result.keep)} decisions for {len(idx)} rows"
            )
        out.columns[f"curate_{name}_keep"] = _scatter(n, idx, result.keep, pa.bool_())
        out.columns[f"curate_{name}_reason"] = _scatter(n, idx, result.reason, pa.string())
        if result.score is not None:
            out.columns[f"curate_{name}_score"] = _scatter(
                n, idx, result.score.astype(float), pa.float64()
            )
        if result.ref is not None:
            out.columns[f"curate_{name}_dup_of"] = _scatter(n, idx, result.ref, pa.string())
        for local in np.flatnonzero(~result.keep):
            keep[idx[local]] = False
            reason[idx[local]] = f"{name}:{result.reason[local]}"
        out.funnel.append(
            {
                "step": name,
                "left": int(keep.sum()),
                "dropped": dict(
                    Counter(r for r, k in zip(result.reason, result.keep, strict=True) if not k)
                ),
            }
        )
        out.metrics.update(result.metrics)
        if result.artifacts:
            out.artifacts[name] = dict(result.artifacts)
    out.columns["curate_keep"] = pa.array(keep, pa.bool_())
    out.columns["curate_reason"] = pa.array(reason, pa.string())
    return out
