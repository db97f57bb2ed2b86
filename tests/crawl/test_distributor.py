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


def _make_dying_shard():
    """A shard whose worker process dies (SIGKILL, as the OOM killer or a lost node would) on
    its first attempt; the flag file makes the rerun, if any, finish."""

    def dying_shard(index: int, flag: str, progress=None) -> dict:
        import os
        import signal
        from pathlib import Path

        if not Path(flag).exists():
            Path(flag).write_text("died once")
            os.kill(os.getpid(), signal.SIGKILL)
        progress(1, 1)
        return {"index": index, "count": 1}

    return dying_shard


def test_a_lost_worker_is_rerun_with_retries(ray_session, tmp_path):
    seen: list[int] = []
    job = (4, _make_dying_shard(), (str(tmp_path / "flag"),))
    run_shard_jobs([job], 1, 0.5, 1, lambda s: seen.append(s["index"]), show=False, max_retries=2)
    assert seen == [4] and (tmp_path / "flag").exists()


def test_a_lost_worker_without_retries_fails_naming_the_shard(ray_session, tmp_path):
    from tasks.crawl.distributor import ShardLostError

    job = (4, _make_dying_shard(), (str(tmp_path / "flag"),))
    with pytest.raises(ShardLostError, match=r"shard 00004: its Ray worker died .*max_retries=0"):
        run_shard_jobs([job], 1, 0.5, 1, lambda s: None, show=False, max_retries=0)
