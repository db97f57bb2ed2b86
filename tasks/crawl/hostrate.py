"""The cluster-wide per-host request rate: one Ray actor per crawl run hands out request slots.

`http.max_requests_per_second_per_host` applies to the whole crawl: with N shard tasks in
flight (on any node) a host still gets at most `rate` image requests per second, not N x rate.

- `HostSlots` (the actor, num_cpus=0, one per run, named `clipmill-hostrate-<run>`, owned by
  the driver, not detached: it dies with the run) keeps, per host, the time its next request
  may start: the same spacing as the per-task `tasks.crawl.http.HostRateLimit` (a bucket of one
  token per host refilled every 1/rate s), decided in one place.
- `ClusterHostRate` (in each shard task, the same `wait(url)` as HostRateLimit) batches: the
  requests of a task waiting while one call to the actor is in flight go together in the next
  call, one call for every host they name. A task has at most one call in flight, so the actor
  sees at most shards_in_flight calls at a time, whatever the connections.
- Slots travel as delays relative to the actor's clock at reply time (no clock is shared
  between nodes); the reply's transit shifts a task's slots by its latency (~1 ms on a node),
  the tolerance the test allows.
- Hosts whose next slot has passed are dropped from the actor's table (absent = free now), so
  its memory holds only hosts with requests in the last 1/rate s.

Decision (issue 17): the stage always uses the actor when the rate is set (the runner always
has Ray). Without an actor handle (the library's `download_shard` called outside a Ray run:
tests, a notebook) the per-task HostRateLimit applies, as documented in docs/CONTRACTS.md.
A restarted actor (its node lost) starts with an empty table: the requests of that moment may
come up to one slot per host early, once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

PRUNE_EVERY = 1024  # reserve calls between two sweeps of hosts whose next slot has passed


def host_of(url: str) -> str:
    """The host a rate applies to (lower case, no port): as HostRateLimit counts it."""
    return (urlsplit(url).hostname or "").lower()


class HostSlots:
    """Next free request slot per host, for every shard task of one crawl (the Ray actor's class)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"http.max_requests_per_second_per_host must be > 0 here, got {rate}")
        self.interval = 1.0 / rate
        self.next_slot: dict[str, float] = {}
        self.calls = 0

    def reserve(self, counts: dict[str, int]) -> dict[str, list[float]]:
        """`counts[host]` consecutive slots per host, as delays in seconds from now."""
        now = time.monotonic()
        out: dict[str, list[float]] = {}
        for host, n in counts.items():
            slot = max(now, self.next_slot.get(host, now))
            out[host] = [slot - now + k * self.interval for k in range(n)]
            self.next_slot[host] = slot + n * self.interval
        self.calls += 1
        if self.calls % PRUNE_EVERY == 0:
            self.next_slot = {h: t for h, t in self.next_slot.items() if t > now}
        return out

    def hosts(self) -> int:
        """Hosts in the table (for tests: pruning keeps it small)."""
        return len(self.next_slot)


def start_host_slots(rate: float) -> Any:
    """The run's HostSlots actor (a handle, picklable into shard tasks); None when rate is 0.

    num_cpus=0: it must not take a CPU a shard task is waiting for (2-core machines). Restarted
    if its worker dies, and its calls retried, so a lost node does not fail the crawl."""
    if rate <= 0:
        return None
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(HostSlots)
    return actor.options(name=f"clipmill-hostrate-{uuid.uuid4().hex[:12]}").remote(rate)


def stop_host_slots(handle: Any) -> None:
    """End the run's actor (the driver, after the last shard)."""
    if handle is None:
        return
    import ray

    ray.kill(handle, no_restart=True)


class ClusterHostRate:
    """A shard task's side of the cluster-wide rate: `await wait(url)` returns at its slot.

    Requests waiting while a call is in flight are batched into the next call (one call per
    batch, all hosts together). Created inside the task's event loop.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.waiting: dict[str, list[asyncio.Future[float]]] = {}
        self.busy = False
        self.calls = 0

    async def wait(self, url: str) -> None:
        """Sleep until this request's slot for the URL's host comes."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(host_of(url), []).append(fut)
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())
        delay = await fut
        if delay > 0:
            await asyncio.sleep(delay)

    async def _serve(self) -> None:
        """Ask the actor for the slots of every waiting request until none waits."""
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, {}
                try:
                    ref = self.handle.reserve.remote({h: len(f) for h, f in batch.items()})
                    slots = await asyncio.wrap_future(ref.future())
                except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                    batch.update(self.waiting)
                    self.waiting = {}
                    for futs in batch.values():
                        for f in futs:
                            if not f.done():
                                f.set_exception(exc)
                    return
                self.calls += 1
                received = time.monotonic()
                for host, futs in batch.items():
                    for f, delay in zip(futs, slots[host], strict=True):
                        if not f.done():  # a waiter cancelled (the shard's deadline) is skipped
                            f.set_result(delay - (time.monotonic() - received))
        finally:
            self.busy = False
