"""Run independent calls as Ray tasks when Ray is up (the runner starts it), else one by one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.progress import Progress

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def run_all(calls: dict[str, Call], num_cpus: float = 1, label: str = "sample") -> dict[str, Any]:
    """Results keyed like the calls; order of completion never matters (determinism).

    Calls finished are counted as they finish (`label` 3/6 ..., tasks/progress.py), so a long
    build says what it is doing in logs too."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a project dependency
        ray = None  # type: ignore[assignment]
    with Progress(label, total=len(calls), unit="parts") as progress:
        if ray is None or not ray.is_initialized() or len(calls) < 2:
            results = {}
            for name, (fn, args) in calls.items():
                results[name] = fn(*args)
                progress.update(1, last=name)
            return results
        refs = {
            ray.remote(fn).options(num_cpus=num_cpus).remote(*args): name
            for name, (fn, args) in calls.items()
        }
        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[refs[ready[0]]] = ray.get(ready[0])
            progress.update(1, last=refs[ready[0]])
    return {name: done[name] for name in calls}
