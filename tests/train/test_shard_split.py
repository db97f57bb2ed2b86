"""Split mode (`shard_split`): each worker reads only its own shards, sees disjoint samples,
together all of them, and resumes exactly; the exact-equivalence mode stays the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.io.wds import IMAGE_EXTS, sample_keys
from tasks.train import data
from tasks.train.data import (
    DataError,
    check_split,
    global_batches,
    list_shards,
    shard_part,
    worker_batches,
    worker_samples,
)

from .conftest import tiny_params
from .shards import write_shards


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """4 shards x 12 samples: two shards per worker of two."""
    folder = write_shards(tmp_path_factory.mktemp("split") / "shards", n_shards=4, per_shard=12)
    return list_shards(str(folder))


def _keys_of(shards: list[str]) -> set[str]:
    return {k for s in shards for k in sample_keys(s, IMAGE_EXTS)}


def _samples(shards: list[str], rank: int, world: int, steps: int, **over: object) -> list[str]:
    args: dict = dict(batch_size=8, seed=5, resample=False, buffer=1, start_step=0)
    args.update(over)
    it = worker_samples(shards, rank=rank, world=world, split_shards=True, **args)
    return [s["__key__"] for _ in range(steps) for s in next(it)]


def test_workers_see_disjoint_samples_and_together_all(four_shards: list[str]) -> None:
    # epoch mode, no shuffling across the epoch boundary: one pass = 24 samples = 6 local batches
    parts = [_samples(four_shards, r, 2, 6) for r in range(2)]
    assert set(parts[0]).isdisjoint(parts[1])
    assert set(parts[0]) | set(parts[1]) == _keys_of(four_shards)
    for rank, seen in enumerate(parts):
        assert len(seen) == len(set(seen)) == 24  # each of its samples once per epoch
        assert set(seen) == _keys_of(four_shards[rank::2])


def test_resampled_workers_stay_inside_their_part(four_shards: list[str]) -> None:
    for rank in range(2):
        seen = _samples(four_shards, rank, 2, 12, resample=True, buffer=16)
        assert set(seen) <= _keys_of(shard_part(four_shards, rank, 2))
        assert len(set(seen)) > 12  # shuffled draws, not one batch repeated


def test_a_worker_opens_only_its_own_shards(
    four_shards: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = data._shard_samples

    def spy(shard: str):  # type: ignore[no-untyped-def]
        opened.append(shard)
        return real(shard)

    monkeypatch.setattr(data, "_shard_samples", spy)
    _samples(four_shards, 1, 2, 10, resample=True, buffer=8)
    assert opened and set(opened) <= {four_shards[1], four_shards[3]}
    opened.clear()
    # the exact-equivalence mode reads every shard on every worker (what split mode saves)
    it = worker_samples(
        four_shards, batch_size=8, rank=1, world=2, seed=5, resample=False, buffer=1
    )
    for _ in range(6):
        next(it)
    assert set(opened) == set(four_shards)


def test_split_resume_skips_exactly_the_consumed_batches(four_shards: list[str]) -> None:
    import torch

    common = dict(
        batch_size=8,
        world=2,
        seed=3,
        resample=True,
        buffer=8,
        transform=lambda im: torch.tensor(list(im.getpixel((20, 20))), dtype=torch.float32),
        tokenizer=lambda texts: torch.tensor([len(t) for t in texts]),
        fields={"txt": 1.0},
        split_shards=True,
    )
    for rank in range(2):
        straight = worker_batches(four_shards, rank=rank, start_step=0, **common)
        expected = [next(straight) for _ in range(5)]
        resumed = worker_batches(four_shards, rank=rank, start_step=3, **common)
        for want in expected[3:]:
            got = next(resumed)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sample_indices_are_global_positions_and_one_worker_is_the_global_stream(
    four_shards: list[str],
) -> None:
    it = worker_samples(
        four_shards, batch_size=8, rank=1, world=2, seed=0, resample=True, buffer=4,
        split_shards=True,
    )  # fmt: skip
    assert [s["__index__"] for s in next(it)] == [4, 5, 6, 7]
    assert [s["__index__"] for s in next(it)] == [12, 13, 14, 15]
    single = _samples(four_shards, 0, 1, 4, resample=True, buffer=8)
    whole = global_batches(four_shards, 8, seed=5, resample=True, buffer=8)
    assert single == [s["__key__"] for _ in range(4) for s in next(whole)]


def test_too_few_shards_or_an_empty_part_is_a_clear_error(
    four_shards: list[str], tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="4 shard\\(s\\) for 5 workers"):
        shard_part(four_shards, 0, 5)
    import pyarrow as pa
    import pyarrow.parquet as pq

    flagged = tmp_path / "flagged.parquet"
    pq.write_table(pa.table({"uid": sorted(_keys_of(four_shards[1::2]))}), flagged)
    excluded = frozenset(sorted(_keys_of(four_shards[1::2])))
    with pytest.raises(DataError, match="worker 1 of 2"):
        check_split(four_shards, 2, excluded)
    check_split(four_shards, 2)  # every part has samples: no error

    from tasks.train.stage import preflight

    shards_dir = str(Path(four_shards[0]).parent)
    p = tiny_params(tmp_path, Path(shards_dir), exclude_uids=str(flagged), batch_size=8)
    preflight(p)  # equivalence mode: the other worker's samples are still there
    with pytest.raises(DataError, match="worker 1 of 2"):
        preflight(p.model_copy(update={"num_workers": 2, "shard_split": True}))


def test_split_runs_are_their_own_computation(tmp_path: Path, shards_dir: Path) -> None:
    one = tiny_params(tmp_path, shards_dir, num_workers=1)
    two = tiny_params(tmp_path, shards_dir, num_workers=2)
    assert one.fingerprint_fields() == two.fingerprint_fields()  # equivalence: N workers == 1
    split1 = tiny_params(tmp_path, shards_dir, num_workers=1, shard_split=True)
    split2 = tiny_params(tmp_path, shards_dir, num_workers=2, shard_split=True)
    assert split2.fingerprint_fields() != split1.fingerprint_fields()  # never resumes the other
    assert split2.fingerprint_fields() != two.fingerprint_fields()
