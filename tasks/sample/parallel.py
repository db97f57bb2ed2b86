"""Run independent calls as Ray tasks when Ray is up (the runner starts it), else one by one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def run_all(calls: dict[str, Call], num_cpus: float = 1) -> dict[str, Any]:
    """Results keyed like the calls; order of completion never matters (determinism)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a project dependency
        ray = None  # type: ignore[assignment]
    if ray is None or not ray.is_initialized() or len(calls) < 2:
        return {name: fn(*args) for name, (fn, args) in calls.items()}
    refs = {
        name: ray.remote(fn).options(num_cpus=num_cpus).remote(*args)
        for name, (fn, args) in calls.items()
    }
    return {name: ray.get(ref) for name, ref in refs.items()}
