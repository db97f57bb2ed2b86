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


def test_every_step_and_param_has_a_streamed_form():
    """No step or option refuses any more: each one builds its streamed adapter."""
    from tasks.curate.params import STEP_NAMES
    from tasks.curate.steps.registry import build_step
    from tasks.curate.streamsteps import streamed

    sections = {
        "image_based": {"target_dir": "x"},
        "uid_subset": {"path": "x.npy"},
        "perceptual_dedup": {"max_distance": 64},
        "clip_score": {"caption": "both"},
        "balance": {"target_size": 10},
    }
    for name in STEP_NAMES:
        p = CurateParams(**({name: sections[name]} if name in sections else {}))
        assert streamed(build_step(name, p)).name == name


def test_stream_find_t_equals_find_t(tmp_path, ray_session):
    """balance.target_size's t from two rounds of per-block histograms equals the in-memory
    find_t on the same t_min, with counts wide enough (max 300,000) that the bucket width is
    more than 1 (the second round runs) and with one (the first round answers alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.curate import balancing as bal
    from tasks.curate.steps.base import StepContext
    from tasks.curate.streamsteps import BUCKETS, stream_find_t

    rng = np.random.default_rng(0)
    n_entries, n = 50, 3000
    entry_ids = [
        rng.choice(n_entries, size=int(rng.integers(0, 4)), replace=False).tolist()
        for _ in range(n)
    ]
    table = pa.table(
        {
            "uid": [f"u{i:05d}" for i in range(n)],
            "entry_ids": pa.array(entry_ids, pa.list_(pa.int32())),
        }
    )
    ctx = StepContext(params=CurateParams(), out_dir=tmp_path)
    files = []
    for b, start in enumerate(range(0, n, 700)):
        files.append(str(tmp_path / f"b{b:07d}.parquet"))
        pq.write_table(table.slice(start, 700), files[-1])
    wide = rng.integers(1, 300_000, size=n_entries).astype(np.int64)
    narrow = rng.integers(1, 900, size=n_entries).astype(np.int64)
    assert wide.max() > BUCKETS > narrow.max()
    for counts in (wide, narrow):
        tmin = bal.pair_tmin(table.column("uid"), table.column("entry_ids"), counts, 7)
        finite = int(np.isfinite(tmin).sum())
        for target in (1, 17, finite // 2, finite):
            want = bal.find_t(tmin, target)
            assert stream_find_t(files, counts, 7, target, ctx) == want, (target, want)
        with pytest.raises(ValueError, match="exceeds"):
            stream_find_t(files, counts, 7, finite + 1, ctx)


def test_streamed_perceptual_dedup_at_64_bits_equals_the_greedy(tmp_path):
    """max_distance 64: the blocks reduce to the smallest hashed uid; the decisions, refs and
    pHash distances equal the in-memory greedy's (which pairs every hashed row)."""
    from tasks.curate.steps.base import StepContext
    from tasks.curate.steps.dedup import perceptual_dedup
    from tasks.curate.steps.registry import build_step
    from tasks.curate.streamsteps import streamed

    rows = _hash_rows(n_groups=8)
    rows = rows.take(np.random.default_rng(0).permutation(rows.num_rows))
    p = CurateParams(perceptual_dedup={"max_distance": 64})
    adapter = streamed(build_step("perceptual_dedup", p))
    ctx = StepContext(params=p, out_dir=tmp_path)
    adapter.plan(rows.num_rows)
    blocks = [rows.slice(i, 7) for i in range(0, rows.num_rows, 7)]
    for b, block in enumerate(blocks):
        adapter.absorb(adapter.collect(block, b, tmp_path, ctx), rows.num_rows)
    adapter.reduce(tmp_path, ctx)
    want = perceptual_dedup(rows, 64)
    got = [adapter.decide(block, b, tmp_path, ctx)[0] for b, block in enumerate(blocks)]
    assert [r for g in got for r in g.reason] == want.reason
    assert [r for g in got for r in (g.ref or [])] == want.ref
    score = np.concatenate([g.score for g in got])
    assert np.array_equal(score, want.score, equal_nan=True)
    assert (
        sum(r == "duplicate_phash" for r in want.reason) == rows.num_rows - 2
    )  # 1 kept, 1 unhashed


def _hash_rows(n_groups: int = 40, seed: int = 1):
    """uid, phash, dhash rows: groups of near-copies (a few flipped bits), chains where A~B,
    B~C but not A~C (the greedy's order matters), copies close in pHash only, missing hashes."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    rows = []

    def flip(v: int, bits: int) -> int:
        for b in rng.choice(64, size=bits, replace=False):
            v ^= 1 << int(b)
        return v

    for _ in range(n_groups):
        ph, dh = (int(x) for x in rng.integers(0, 2**63, size=2))
        chain_p, chain_d = ph, dh
        for _ in range(int(rng.integers(1, 5))):
            chain_p, chain_d = flip(chain_p, 3), flip(chain_d, 3)  # a chain: 3 bits per link
            rows.append((f"u{rng.integers(1e9):09d}", chain_p, chain_d))
        rows.append((f"u{rng.integers(1e9):09d}", flip(ph, 2), flip(dh, 20)))  # pHash only
    rows.append(("u_nohash", None, 5))
    uid, ph, dh = zip(*rows, strict=True)
    return pa.table(
        {
            "uid": list(uid),
            "phash": [None if v is None else f"{v:016x}" for v in ph],
            "dhash": [f"{v:016x}" for v in dh],
        }
    )


def test_streamed_perceptual_dedup_equals_the_greedy(tmp_path, ray_session):
    """Band partitions + the greedy over pairs give the in-memory step's decisions, refs and
    distances, blocks of 17 rows in a shuffled pool order."""
    from tasks.curate.steps.base import StepContext
    from tasks.curate.steps.dedup import perceptual_dedup
    from tasks.curate.steps.registry import build_step
    from tasks.curate.streamsteps import streamed

    rows = _hash_rows()
    rows = rows.take(np.random.default_rng(0).permutation(rows.num_rows))
    p = CurateParams(perceptual_dedup={"max_distance": 4})
    adapter = streamed(build_step("perceptual_dedup", p))
    ctx = StepContext(params=p, out_dir=tmp_path)
    adapter.plan(rows.num_rows)
    blocks = [rows.slice(i, 17) for i in range(0, rows.num_rows, 17)]
    for b, block in enumerate(blocks):
        adapter.collect(block, b, tmp_path, ctx)
    adapter.reduce(tmp_path, ctx)
    want = perceptual_dedup(rows, 4)
    got = [adapter.decide(block, b, tmp_path, ctx)[0] for b, block in enumerate(blocks)]
    assert [r for g in got for r in g.reason] == want.reason
    assert [r for g in got for r in (g.ref or [])] == want.ref
    score = np.concatenate([g.score for g in got])
    assert np.array_equal(score, want.score, equal_nan=True)
    assert sum(r == "duplicate_phash" for r in want.reason) > 10  # chains and groups dropped


def test_streamed_semdedup_fits_on_a_sample(hand_pool, tmp_path, ray_session):
    """Above `stream_fit_rows` the k-means fit sees a seeded sample only: it still decides
    every row that has an embedding (a code path test: which rows are duplicates may differ)."""
    from tasks.curate.inputs import prepare
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.steps.registry import build_steps, needed_inputs
    from tasks.curate.stream import stream_decide

    out = tmp_path / "out"
    out.mkdir()
    p = _params(hand_pool, out, steps=["semantic_dedup"], semantic_dedup={"stream_fit_rows": 20})
    pool = open_pool_table(hand_pool.lance_uri)
    _, ctx, _ = prepare(pool, p, out, needed_inputs(build_steps(p)))
    steps = build_steps(p)
    got = stream_decide(pool, hand_pool.lance_uri, steps, ctx, tmp_path / "scratch")
    ledger = _ledger(open_pool_table(hand_pool.lance_uri))
    decided = [r for r in ledger.values() if r["curate_semantic_dedup_keep"] is not None]
    assert len(decided) == got.funnel[0]["left"] > 20
    assert any(r["curate_semantic_dedup_score"] is not None for r in decided)


def test_semdedup_does_not_depend_on_the_pools_row_order(tmp_path):
    """LanceDB's merges reorder the pool's rows between runs: SemDeDup fits in uid order, so a
    permuted pool gets the same decisions, refs and scores row for row (what lets the streamed
    path, which reads another physical order, equal the in-memory one)."""
    import pyarrow as pa

    from tasks.curate.params import SemanticDedupParams
    from tasks.curate.steps.semdedup import semantic_dedup

    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 16)).astype(np.float32)
    x = np.concatenate([base, base[:30] + 0.01 * rng.standard_normal((30, 16)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [f"u{i:03d}" for i in rng.permutation(len(x))]
    rows = pa.table({"uid": uids, "image_emb": pa.array(list(x), pa.list_(pa.float32(), 16))})
    p = SemanticDedupParams(eps=0.01, clusters=8)
    want = semantic_dedup(rows, p, 0, tmp_path)
    perm = rng.permutation(len(x))
    got = semantic_dedup(rows.take(pa.array(perm)), p, 0, tmp_path)
    back = np.argsort(perm)
    assert [got.reason[i] for i in back] == want.reason
    assert [got.ref[i] for i in back] == want.ref
    assert np.allclose(got.score[back], want.score, equal_nan=True, atol=1e-6)
    assert sum(r == "semantic_duplicate" for r in want.reason) >= 20
