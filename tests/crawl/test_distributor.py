"""Shard jobs on Ray: progress streamed by the tasks, callbacks for every finished shard, errors kept."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.crawl.distributor import run_shard_jobs, stream_shard


def _make_fake_shard():
    """A shard function defined in a closure: cloudpickle ships it to the workers by value."""

    def fake_shard(index: int, size: int, fail: bool, progress=None) -> dict:
        for _ in range(size):
            time.sleep(0.01)
            progress(1, 1)
        if fail:
            raise RuntimeError(f"shard {index} broke")
        return {"index": index, "count": size}

    return fake_shard


fake_shard = _make_fake_shard()


def test_stream_shard_yields_progress_then_stats():
    items = list(stream_shard(fake_shard, 3, 60, False))
    assert items[-1] == ("stats", {"index": 3, "count": 60})
    progress = [i for i in items[:-1] if i[0] == "progress"]
    assert progress and sum(i[1] for i in progress) == 60 and sum(i[2] for i in progress) == 60


def test_stream_shard_reraises_the_shard_error():
    with pytest.raises(RuntimeError, match="shard 5 broke"):
        list(stream_shard(fake_shard, 5, 3, True))


def test_every_shard_handed_over_in_a_helper_thread(ray_session):
    seen: list[tuple[int, str]] = []
    jobs = [(i, fake_shard, (5 + i, False)) for i in range(5)]
    seconds = run_shard_jobs(
        jobs,
        2,
        0.5,
        sum(5 + i for i in range(5)),
        lambda s: seen.append((s["index"], threading.current_thread().name)),
        show=False,
    )
    assert seconds > 0
    assert sorted(i for i, _ in seen) == [0, 1, 2, 3, 4]
    assert all(name.startswith("shard-done") for _, name in seen)


def test_a_failing_shard_raises_after_the_finished_ones_are_handed_over(ray_session):
    seen: list[int] = []
    jobs = [(0, fake_shard, (2, False)), (1, fake_shard, (40, True))]
    with pytest.raises(Exception, match="shard 1 broke"):
        run_shard_jobs(jobs, 2, 0.5, 42, lambda s: seen.append(s["index"]), show=False)
    assert seen == [0]


def test_a_failing_callback_stops_the_run(ray_session):
    def boom(stats: dict) -> None:
        raise ValueError(f"pool write failed for {stats['index']}")

    with pytest.raises(ValueError, match="pool write failed"):
        run_shard_jobs([(0, fake_shard, (2, False))], 1, 0.5, 2, boom, show=False)
