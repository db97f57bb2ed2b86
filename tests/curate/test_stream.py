"""Curate's streamed decisions (tasks/curate/stream.py) against the in-memory path: on the hand
pool, blocks of 5 rows, the same ledger columns, funnel, metrics, uid lists and entry counts."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.curate.params import CurateParams

STEPS = ["basic", "exact_dedup", "clip_score", "balance"]


def _params(hp, out, **kw) -> CurateParams:
    base: dict = dict(
        steps=STEPS,
        paths=dict(
            pool_uri=hp.lance_uri,
            crawl_dir=str(hp.crawl_dir),
            out_dir=str(out),
            clip_model="random:clipmill-tiny",
            eval_dir=str(hp.eval_dir),
        ),
        metadata=dict(wordnet=None, extra=[str(hp.metadata)]),
        balance=dict(t=3),
        clip_score=dict(fraction=0.6),
        holdout=dict(fraction=0.25, seed=3),
        compute=dict(rows_per_block=5),
        outputs=dict(materialise=False, report_examples=0),
    )
    for key, value in kw.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return CurateParams(**base)


def _ledger(pool) -> dict[str, dict]:
    table = pool.to_arrow()
    cols = [c for c in table.column_names if c.startswith("curate_")]
    return {r["uid"]: {c: r[c] for c in cols} for r in table.select(["uid", *cols]).to_pylist()}


def test_streamed_decisions_equal_in_memory(hand_pool, tmp_path, ray_session):
    """Two step orders: DataComp's, and one whose first step is a global decision (so the first
    pass decides nothing and the second one starts at step 0)."""
    from dataclasses import replace

    from tasks.curate.inputs import prepare
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.steps.registry import build_steps, needed_inputs

    out = tmp_path / "out"
    out.mkdir()
    p = _params(hand_pool, out)
    pool = open_pool_table(hand_pool.lance_uri)
    rows, ctx, _ = prepare(pool, p, out, needed_inputs(build_steps(p)))
    for order in (STEPS, ["exact_dedup", "clip_score", "basic", "balance"]):
        q = _params(hand_pool, out, steps=order)
        _compare(hand_pool, rows, replace(ctx, params=q), q, tmp_path / "_".join(order))


def _compare(hp, rows, ctx, p, work) -> None:
    """The in-memory decisions, then the streamed ones over the same pool: equal everywhere."""
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.stage import _decide, _subset
    from tasks.curate.steps.registry import build_steps
    from tasks.curate.stream import stream_decide

    work.mkdir()
    pool = open_pool_table(hp.lance_uri)
    outcome, held = _decide(pool, rows, build_steps(p), ctx)
    memory = _ledger(pool)
    subset = _subset(rows, outcome.keep & ~held, work / "memory_subset.parquet")
    held_uids = _subset(rows, held, work / "memory_held.parquet")

    pool = open_pool_table(hp.lance_uri)
    steps = build_steps(p)
    for step in steps:
        step.setup(ctx)
    streamed = stream_decide(pool, hp.lance_uri, steps, ctx, work / "scratch")
    got = _ledger(open_pool_table(hp.lance_uri))

    assert set(got) == set(memory) and len(got) == 43
    decided = [
        c
        for c in next(iter(memory.values()))
        if c.endswith(("_keep", "_reason", "_score", "_dup_of", "_holdout"))
    ]
    assert {"curate_exact_dedup_dup_of", "curate_balance_score", "curate_holdout"} <= set(decided)
    for uid, row in memory.items():
        for c in decided:
            assert got[uid][c] == row[c], (uid, c, got[uid][c], row[c])
    assert got["zexact"]["curate_exact_dedup_dup_of"] == "good000"  # its twin: another block
    assert any(r["curate_reason"].startswith("clip_score:") for r in memory.values())
    assert any(r["curate_reason"].startswith("balance:balanced_out") for r in memory.values())
    assert (
        pq.read_table(p.paths.out_dir + "/subset_uids.parquet").column("uid").to_pylist() == subset
    )
    held_file = pq.read_table(p.paths.out_dir + "/holdout_uids.parquet")
    assert held_file.column("uid").to_pylist() == held_uids and held_uids
    assert streamed.funnel == outcome.funnel  # _decide appended the holdout entry too
    assert streamed.curated_size == int(outcome.keep.sum())
    assert streamed.holdout_size == int(held.sum())
    for key, value in outcome.metrics.items():
        assert streamed.metrics[key] == value, key
    mine = streamed.artifacts["balance"]["entry_counts"]
    theirs = outcome.artifacts["balance"]["entry_counts"]
    assert np.array_equal(mine.before, theirs.before) and np.array_equal(mine.after, theirs.after)


@pytest.mark.parametrize(
    ("name", "section", "names"),
    [
        ("semantic_dedup", {}, "semantic_dedup"),
        ("clip_score", {"caption": "both"}, "clip_score.caption"),
        ("balance", {"target_size": 10}, "balance.target_size"),
    ],
)
def test_what_is_not_streamed_is_a_clear_error(name, section, names):
    from tasks.curate.steps.registry import build_step
    from tasks.curate.streamsteps import streamed

    with pytest.raises(NotImplementedError, match=names):
        streamed(build_step(name, CurateParams(**{name: section})))
