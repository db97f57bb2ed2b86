"""Start a local Ray or join a cluster (RAY_ADDRESS), once per process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.settings import Settings, get_settings


@contextmanager
def ray_session(settings: Settings | None = None) -> Iterator[None]:
    """Join the Ray that is already up (tests, a driver on a cluster) or start one for this run."""
    settings = settings or get_settings()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if settings.ray_address:
        kwargs["address"] = settings.ray_address
    else:
        kwargs["num_cpus"] = settings.ray_num_cpus
        kwargs["object_store_memory"] = settings.ray_object_store_mb * 1024 * 1024
    ray.init(**kwargs)
    try:
        _quiet_ray_data()
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    """Progress bars of Ray Data flood non-interactive logs (CI, DVC)."""
    import sys

    try:
        from ray.data import DataContext
    except ImportError:
        return
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
