"""Run shard jobs as Ray tasks with a cap on shards in flight, a live progress bar and a callback per shard."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

ShardJob = tuple[int, Callable[..., dict[str, Any]], tuple[Any, ...]]  # (index, function, args)


def _progress_actor() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        """Images done / succeeded, reported by shard tasks every few dozen images."""

        def __init__(self) -> None:
            self.done = 0
            self.ok = 0

        def add(self, done: int, ok: int) -> None:
            self.done += done
            self.ok += ok

        def get(self) -> tuple[int, int]:
            return self.done, self.ok

    return Progress.remote()


def _reporter(actor: Any) -> Callable[[int, int], None]:
    def report(done: int, ok: int) -> None:
        actor.add.remote(done, ok)

    return report


def run_shard_jobs(
    jobs: list[ShardJob],
    in_flight: int,
    cpus: float,
    total_images: int,
    on_done: Callable[[dict[str, Any]], None],
    show: bool = True,
    desc: str = "crawl",
) -> float:
    """Submit at most `in_flight` shard tasks at a time; call `on_done` per finished shard (driver side).

    Returns the wall seconds spent. A task that raises is a bug (per-URL failures are statuses),
    so it propagates after the shards already finished have been handed to `on_done`.
    """
    import ray
    from tqdm import tqdm

    actor = _progress_actor()
    report = _reporter(actor)
    started = time.perf_counter()
    pending = list(reversed(jobs))
    running: dict[Any, int] = {}
    remotes: dict[Any, Any] = {}
    bar = tqdm(total=total_images, desc=desc, unit="img", disable=not show, mininterval=1.0)
    try:
        while pending or running:
            while pending and len(running) < in_flight:
                index, fn, args = pending.pop()
                if fn not in remotes:
                    remotes[fn] = ray.remote(num_cpus=cpus, max_retries=0)(fn)
                ref = remotes[fn].remote(index, *args, report)
                running[ref] = index
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                running.pop(ref)
                on_done(ray.get(ref))
            done, ok = ray.get(actor.get.remote())
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.n = done
            bar.set_postfix(
                img_s=f"{done / elapsed:.1f}", success=f"{ok / max(done, 1):.1%}", refresh=False
            )
            bar.refresh()
    finally:
        bar.close()
        ray.kill(actor)
    return time.perf_counter() - started
