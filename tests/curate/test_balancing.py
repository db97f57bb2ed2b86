"""Balancing statistics against p_e = t / max(count, t), determinism, nesting, find_t, Ray path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.curate import balancing as bal


def _pool(n_texts: int, n_entries: int, rng: np.random.Generator) -> tuple[list[str], pa.Array]:
    """Zipf-like matches: a few head entries, a long tail; 0-3 entries per text."""
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    lists = []
    for _ in range(n_texts):
        k = rng.integers(0, 4)
        lists.append(sorted(set(rng.choice(n_entries, size=k, p=weights).tolist())))
    uids = [f"uid{i:07d}" for i in range(n_texts)]
    return uids, pa.array(lists, pa.list_(pa.int32()))


def test_counts_are_int64_sets():
    arr = pa.array([[0, 2], [], None, [2]], pa.list_(pa.int32()))
    counts = bal.count_entries(arr, 4)
    assert counts.dtype == np.int64 and counts.tolist() == [1, 0, 2, 0]


def test_probabilities():
    p = bal.entry_probabilities(np.array([0, 5, 10, 40]), t=10)
    assert p.tolist() == [1.0, 1.0, 1.0, 0.25]


def test_single_entry_keep_rate_matches_formula_over_seeds():
    """Texts matching only entry e are kept with probability p_e: check per entry, many seeds."""
    counts = np.array([1000, 400, 50], dtype=np.int64)
    t = 100
    p = bal.entry_probabilities(counts, t)
    for e, c in enumerate(counts):
        uids = [f"e{e}-{i}" for i in range(c)]
        lists = pa.array([[e]] * c, pa.list_(pa.int32()))
        kept = [
            bal.keep_mask(bal.pair_tmin(uids, lists, counts, seed), t).sum() for seed in range(40)
        ]
        mean = float(np.mean(kept))
        sd = np.sqrt(c * p[e] * (1 - p[e]) / 40)
        assert abs(mean - c * p[e]) <= 4 * sd + 1e-9, (e, mean, c * p[e])


def test_multi_entry_keep_probability_is_one_minus_product():
    counts = np.array([400, 200, 1000], dtype=np.int64)
    t = 100
    p = bal.entry_probabilities(counts, t)
    expected = 1 - (1 - p[0]) * (1 - p[1]) * (1 - p[2])  # 0.7375
    n = 20_000
    uids = [f"m{i}" for i in range(n)]
    lists = pa.array([[0, 1, 2]] * n, pa.list_(pa.int32()))
    rate = bal.keep_mask(bal.pair_tmin(uids, lists, counts, seed=3), t).mean()
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_kept_counts_per_entry_agree_with_formula_over_seeds():
    """E[kept_e] = sum over texts matching e of 1 - prod(1 - p): checked per entry, 20 seeds."""
    rng = np.random.default_rng(0)
    uids, lists = _pool(20_000, 300, rng)
    counts = bal.count_entries(lists, 300)
    t = 200
    p = bal.entry_probabilities(counts, t)
    expected = np.zeros(300)
    variance = np.zeros(300)
    for ids in lists.to_pylist():
        if ids:
            q = 1 - np.prod(1 - p[ids])
            expected[ids] += q
            variance[ids] += q * (1 - q)
    seeds = 20
    kept_totals = np.zeros(300)
    for seed in range(seeds):
        keep = bal.keep_mask(bal.pair_tmin(uids, lists, counts, seed), t)
        kept_totals += bal.count_entries(lists.filter(pa.array(keep)), 300)
    mean_kept = kept_totals / seeds
    tolerance = 5 * np.sqrt(variance / seeds) + 1e-9
    assert np.all(np.abs(mean_kept - expected) <= tolerance)
    tail = counts <= t
    assert np.all(mean_kept[tail] == counts[tail])  # p_e = 1: every text of a tail entry stays
    assert mean_kept[0] < 0.8 * counts[0]  # the head entry is cut


def test_deterministic_and_independent_of_sharding():
    rng = np.random.default_rng(1)
    uids, lists = _pool(3000, 50, rng)
    counts = bal.count_entries(lists, 50)
    whole = bal.pair_tmin(uids, lists, counts, seed=7)
    parts = np.concatenate(
        [
            bal.pair_tmin(uids[i : i + 700], lists[i : i + 700], counts, seed=7)
            for i in range(0, 3000, 700)
        ]
    )
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole, bal.pair_tmin(uids, lists, counts, seed=7))
    assert not np.array_equal(whole, bal.pair_tmin(uids, lists, counts, seed=8))


def test_unmatched_texts_are_dropped_and_subsets_nest():
    rng = np.random.default_rng(2)
    uids, lists = _pool(5000, 80, rng)
    counts = bal.count_entries(lists, 80)
    tmin = bal.pair_tmin(uids, lists, counts, seed=0)
    empty = np.array([len(x) == 0 for x in lists.to_pylist()])
    assert np.all(np.isinf(tmin[empty]))
    small, big = bal.keep_mask(tmin, 20), bal.keep_mask(tmin, 60)
    assert not small[empty].any() and np.all(big[small])


@pytest.mark.parametrize("target", [1, 100, 1234, 2500])
def test_find_t_hits_the_target(target):
    rng = np.random.default_rng(3)
    uids, lists = _pool(5000, 80, rng)
    counts = bal.count_entries(lists, 80)
    tmin = bal.pair_tmin(uids, lists, counts, seed=0)
    t = bal.find_t(tmin, target)
    assert bal.size_at(tmin, t) >= target
    assert t == 1 or bal.size_at(tmin, t - 1) < target


def test_find_t_refuses_impossible_targets():
    tmin = np.array([1.0, np.inf])
    with pytest.raises(ValueError, match="exceeds"):
        bal.find_t(tmin, 2)


def test_ray_map_reduce_map_equals_in_memory(tmp_path, ray_session):
    rng = np.random.default_rng(4)
    uids, lists = _pool(4000, 60, rng)
    paths = []
    for k, start in enumerate(range(0, 4000, 1500)):
        path = tmp_path / f"m{k}.parquet"
        pq.write_table(
            pa.table({"uid": uids[start : start + 1500], "entry_ids": lists[start : start + 1500]}),
            path,
        )
        paths.append(path)
    counts, outs = bal.balance_files(paths, tmp_path / "out", 60, seed=5)
    assert np.array_equal(counts, bal.count_entries(lists, 60))
    got = pa.concat_tables([pq.read_table(o) for o in outs])
    assert got.column("uid").to_pylist() == uids
    assert np.array_equal(got.column("tmin").to_numpy(), bal.pair_tmin(uids, lists, counts, seed=5))
