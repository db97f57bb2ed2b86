"""Run shard jobs as Ray tasks with a cap on shards in flight, a live progress bar and a callback per shard.

Each shard runs as a Ray streaming-generator task: it yields its progress as it goes and its
stats last. Progress travels with the task's own results, so no progress actor (one more
worker process, booted while the first shards download) is needed.

A task whose worker dies (SIGKILL, out of memory, a lost node) is run again by Ray up to
download.max_retries times; the shard functions rewrite their shard whole, so a rerun never
duplicates a sample. Progress a dead attempt had reported is counted again by the rerun (the
bar may pass 100%); the stats, the only thing the driver keeps, come from the attempt that
finished. With retries spent (or max_retries=0) the run fails with ShardLostError naming the
shard.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tasks.base import StageError

ShardJob = tuple[int, Callable[..., dict[str, Any]], tuple[Any, ...]]  # (index, function, args)
PROGRESS_EVERY_S = 0.5  # how often a shard task reports images done


class ShardLostError(StageError):
    """A shard task's worker died and Ray's retries (download.max_retries) are spent: names the
    shard, so the user knows where to look; rerunning the crawl resumes at that shard."""


def _lost(exc: BaseException) -> bool:
    """Whether a task error is the loss of its worker / node (not an exception of the task)."""
    import ray.exceptions as rex

    return isinstance(exc, rex.RayError) and not isinstance(exc, rex.RayTaskError)


def stream_shard(fn: Callable[..., dict[str, Any]], index: int, *args: Any) -> Iterator[Any]:
    """Run `fn(index, *args, progress=...)` and yield ("progress", done, ok) now and then, then ("stats", stats).

    `fn` runs in a thread of the task so that its progress callback (called from inside the
    download's event loop) can be turned into yields here.
    """
    events: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["stats"] = fn(index, *args, progress=lambda done, ok: events.put((done, ok)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the task's thread below
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=target, name=f"shard-{index}", daemon=True)
    worker.start()
    done = ok = 0
    last = time.monotonic()
    while (event := events.get()) is not None:
        done, ok = done + event[0], ok + event[1]
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            yield ("progress", done, ok)
            done = ok = 0
            last = time.monotonic()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if done:
        yield ("progress", done, ok)
    yield ("stats", outcome["stats"])


# glibc gives every thread that allocates its own malloc arena; the pool upsert's Rust threads
# (LanceDB) in a long-lived shard worker then keep freed pages per arena, and a worker's RSS grew
# with the shards it had run (measured: +60 MB per worker from 1 to 10 shards; flat with 2
# arenas). Shard tasks get their own workers with the arenas capped (a new process reads it).
SHARD_WORKER_ENV = {"MALLOC_ARENA_MAX": "2"}


def run_shard_jobs(
    jobs: list[ShardJob],
    in_flight: int,
    cpus: float,
    total_images: int,
    on_done: Callable[[dict[str, Any]], None],
    show: bool = True,
    desc: str = "crawl: downloading",
    max_retries: int = 3,
) -> float:
    """Submit at most `in_flight` shard tasks at a time; call `on_done` per finished shard (driver side).

    A shard holds its slot from submission until its stats arrive; the next one is submitted
    then, while the finished task is still exiting, and Ray starts it when the CPU is released.
    `on_done` runs in one helper thread, shard after shard in the order they finish.
    `max_retries`: reruns of a task whose worker died (Ray's task retries; exceptions a task
    raises are never retried). Returns the wall seconds spent.
    A task that raises is a bug or a full disk (per-URL failures are statuses), so it
    propagates after the shards in flight have finished and been handed to `on_done`.
    """
    import ray

    from tasks.progress import Progress

    remote = ray.remote(
        num_cpus=cpus,
        max_retries=max_retries,
        retry_exceptions=False,
        runtime_env={"env_vars": SHARD_WORKER_ENV},
    )(stream_shard)
    started = time.perf_counter()
    pending = list(reversed(jobs))
    running: dict[Any, int] = {}  # ObjectRefGenerator -> shard index
    finished: list[dict[str, Any]] = []
    failure: BaseException | None = None
    done = ok = 0
    # a bar on a terminal, plain lines in logs (DVC, Prefect): tasks/progress.py
    bar = Progress(desc, total=total_images, unit="images", mode=None if show else "off")

    def submit() -> None:
        while pending and len(running) < in_flight:
            index, fn, args = pending.pop()
            running[remote.remote(fn, index, *args)] = index

    def drain(gen: Any) -> None:
        """Consume what `gen` has produced so far; stats go to `finished`, errors to `failure`."""
        nonlocal done, ok, failure
        while True:
            try:
                item = ray.get(next(gen))
            except StopIteration:
                running.pop(gen, None)
                return
            except Exception as exc:  # noqa: BLE001 - raised after the other shards are kept
                # A StageError of the task (a full disk: OutputWriteError) reaches the user as
                # itself, one line naming the file, not wrapped in Ray's remote traceback.
                cause = getattr(exc, "cause", None)
                index = running.pop(gen, None)
                if _lost(exc):
                    exc = ShardLostError(
                        f"shard {index:05d}: its Ray worker died ({type(exc).__name__}) and "
                        f"download.max_retries={max_retries} reruns are spent; the shards "
                        f"finished are kept: run again to resume ({str(exc).splitlines()[0][:200]})"
                    )
                failure = failure or (cause if isinstance(cause, StageError) else exc)
                return
            if item[0] == "progress":
                done, ok = done + item[1], ok + item[2]
            else:
                # The last item: the task is ending and its slot is free for the next shard now
                # (Ray starts it the moment the CPU is released), before on_done runs.
                finished.append(item[1])
                running.pop(gen, None)
                return
            if not ray.wait([gen], num_returns=1, timeout=0)[0]:
                return

    callbacks = ThreadPoolExecutor(1, thread_name_prefix="shard-done")
    handed: list[Future[None]] = []
    try:
        submit()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if ready and len(running) > 1:  # every shard with news by now, not just the first
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            for gen in ready:
                drain(gen)
            if failure is None:
                submit()
            # Callbacks run in order in their own thread: one can take a while (the first opens
            # the LanceDB pool) and this loop must keep refilling freed slots meanwhile.
            handed += [callbacks.submit(on_done, stats) for stats in finished]
            finished.clear()
            # After a failure nothing new starts, but the shards in flight run to their end
            # (kept, or cleaned by their own writer): a driver leaving now would have Ray kill
            # them mid-write, leaving half-written files behind.
            for future in handed:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if done > bar.done:
                bar.update(done - bar.done, success=f"{ok / max(done, 1):.1%}")
        for future in handed:
            future.result()
        if failure is not None:
            raise failure
    finally:
        callbacks.shutdown(wait=True)  # the shards finished so far are all handed over
        bar.close()
    return time.perf_counter() - started
