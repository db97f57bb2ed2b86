"""Shard streaming: clear errors on bad input, seeded order, exact worker slices, caption sampling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tasks.train.data import (
    DataError,
    count_samples,
    global_batches,
    list_shards,
    pick_caption,
    worker_batches,
)


def _keys(batches, n):
    return [[s["__key__"] for s in next(batches)] for _ in range(n)]


def test_missing_and_empty_shards_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list_shards(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.tar files"):
        list_shards(str(tmp_path / "empty"))
    (tmp_path / "empty" / "00000.tar").write_bytes(b"")
    with pytest.raises(DataError, match="empty shard"):
        list_shards(str(tmp_path / "empty"))


def test_count_and_seeded_order(shards_dir: Path) -> None:
    shards = list_shards(str(shards_dir))
    assert count_samples(shards) == 96
    a = _keys(global_batches(shards, 16, seed=1, resample=True, buffer=16), 5)
    b = _keys(global_batches(shards, 16, seed=1, resample=True, buffer=16), 5)
    c = _keys(global_batches(shards, 16, seed=2, resample=True, buffer=16), 5)
    assert a == b
    assert a != c


def test_epoch_mode_sees_every_sample_once_per_epoch(shards_dir: Path) -> None:
    shards = list_shards(str(shards_dir))
    keys = sum(_keys(global_batches(shards, 16, seed=0, resample=False, buffer=1), 6), [])
    assert len(set(keys)) == 96


def test_worker_slices_partition_the_global_batch_and_resume_skips(shards_dir: Path) -> None:
    import torch

    shards = list_shards(str(shards_dir))
    common = dict(
        batch_size=8,
        seed=3,
        resample=True,
        buffer=8,
        transform=lambda im: torch.tensor(list(im.getpixel((20, 20))), dtype=torch.float32),
        tokenizer=lambda texts: torch.tensor([len(t) for t in texts]),
        fields={"txt": 1.0},
    )
    whole = [
        next(worker_batches(shards, rank=0, world=1, start_step=s, **common)) for s in range(3)
    ]
    for step in range(3):
        parts = [
            next(worker_batches(shards, rank=r, world=2, start_step=step, **common))
            for r in range(2)
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[step][0])
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[step][1])
    it = worker_batches(shards, rank=0, world=1, start_step=0, **common)
    next(it)
    assert torch.equal(next(it)[0], whole[1][0])


def test_caption_fields_are_sampled_with_their_probabilities() -> None:
    sample = {"txt": b"alt text", "json": b'{"recaption": "a long description"}'}
    rng = random.Random(0)
    picks = [pick_caption(sample, {"txt": 0.75, "recaption": 0.25}, rng) for _ in range(2000)]
    share = picks.count("alt text") / len(picks)
    assert 0.71 < share < 0.79
    assert pick_caption(sample, {"recaption": 1.0}, rng) == "a long description"
    # a field missing on a sample: fall back to the alt text
    assert pick_caption({"txt": b"only alt"}, {"recaption": 1.0}, rng) == "only alt"
