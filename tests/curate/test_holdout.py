"""Curate's held-out pairs: only kept rows, the requested fraction, seeded, stable, never trained on."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.curate.holdout import choose_holdout, holdout_count, holdout_mask
from tasks.curate.params import CurateParams, HoldoutParams


def _uids(n: int) -> list[str]:
    return [f"uid{i:05d}" for i in range(n)]


@pytest.mark.parametrize(("n", "fraction"), [(1000, 0.05), (37, 0.1), (20, 0.05), (9, 0.5)])
def test_the_requested_fraction_is_held_out(n, fraction):
    held = choose_holdout(_uids(n), fraction, seed=0)
    assert len(held) == holdout_count(n, fraction) == int(np.floor(n * fraction + 0.5))
    assert held <= set(_uids(n))
    assert choose_holdout(_uids(n), 0.0, seed=0) == set()


def test_same_seed_same_split_other_seed_other_split():
    uids = _uids(400)
    first = choose_holdout(uids, 0.1, seed=7)
    assert choose_holdout(list(reversed(uids)), 0.1, seed=7) == first, "order does not matter"
    other = choose_holdout(uids, 0.1, seed=8)
    assert len(other) == len(first) and other != first
    assert len(other & first) < len(first) / 2, "another seed draws another random part"


def test_a_uid_keeps_its_side_when_other_rows_come_and_go():
    """Re-curating the same pool (another threshold) must not reshuffle held-out pairs into training."""
    uids = _uids(1000)
    held = choose_holdout(uids, 0.05, seed=0)
    fewer = [u for u in uids if u not in set(uids[::3]) - held]  # drop a third of the training rows
    again = choose_holdout(fewer, 0.05, seed=0)
    assert again <= held, "with fewer rows, the held-out set shrinks within the old one"


def test_only_kept_rows_are_held_out():
    uids = _uids(200)
    keep = np.arange(200) % 2 == 0
    mask = holdout_mask(uids, keep, HoldoutParams(fraction=0.2, seed=1))
    assert not (mask & ~keep).any(), "a dropped row is never held out"
    assert mask.sum() == 20  # 20% of the 100 kept rows
    with pytest.raises(ValueError, match="3 uids for 2 decisions"):
        holdout_mask(_uids(3), np.ones(2, bool), HoldoutParams())
    with pytest.raises(ValueError, match="repeat"):
        choose_holdout(["a", "a"], 0.5, 0)


def test_params_bound_the_fraction():
    with pytest.raises(ValueError, match="fraction"):
        CurateParams(holdout={"fraction": 0.9})
    assert CurateParams().holdout.fraction == pytest.approx(0.05)


def _run(hand_pool, out, seed: int, fraction: float = 0.3) -> tuple[list[str], list[str]]:
    from tasks.curate.stage import run

    run(
        CurateParams(
            steps=["basic"],
            paths={
                "pool_uri": hand_pool.lance_uri,
                "crawl_dir": str(hand_pool.crawl_dir),
                "out_dir": str(out),
                "clip_model": None,
                "eval_dir": str(hand_pool.eval_dir),
            },
            metadata={"wordnet": None, "extra": [str(hand_pool.metadata)]},
            outputs={"materialise": False, "report_examples": 0},
            holdout={"fraction": fraction, "seed": seed},
        )
    )
    read = lambda name: pq.read_table(out / name).column("uid").to_pylist()  # noqa: E731
    return read("subset_uids.parquet"), read("holdout_uids.parquet")


def test_stage_writes_a_seeded_disjoint_holdout(hand_pool, tmp_path, ray_session):
    subset, held = _run(hand_pool, tmp_path / "a", seed=0)
    assert held and set(held).isdisjoint(subset)
    assert len(held) == holdout_count(len(subset) + len(held), 0.3)
    assert _run(hand_pool, tmp_path / "b", seed=0) == (subset, held), "same seed, same split"
    subset2, held2 = _run(hand_pool, tmp_path / "c", seed=1)
    assert held2 != held and sorted(subset2 + held2) == sorted(subset + held)
    none_subset, none_held = _run(hand_pool, tmp_path / "d", seed=0, fraction=0.0)
    assert none_held == [] and sorted(none_subset) == sorted(subset + held)
