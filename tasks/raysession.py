"""Start a local Ray or join a cluster (RAY_ADDRESS), once per process.

A local Ray takes seconds to boot (GCS, raylet, worker processes), and so does opening the
MLflow run (importing MLflow, opening its store). `ray_session(background=True)` boots Ray in a
thread so the two overlap; `ray_ready()` is where the caller waits for it. The runner
(tasks/runner.py:engines) is that caller: stages never see a half-booted Ray, because it calls
`ray_ready()` before the stage runs and `release_ray()` only after the stage returned.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tasks.settings import Settings, get_settings

# Packages that ray.init shares with MLflow or a stage's driver code. They are imported once up front, in the
# calling thread, so the two threads never import the same package at the same time (Python's
# per-module import locks can deadlock on circular imports across threads).
_SHARED_IMPORTS = (
    "aiohttp",
    "click",
    "pkgutil",
    "timeit",
    "opentelemetry.trace",
    "opentelemetry.metrics",
    "opentelemetry.sdk.metrics",
    "opentelemetry.sdk.resources",
)


# Ray's IPC clients, the raylet's own client of its object store among them, retry a refused
# connection every raylet_client_connect_timeout_milliseconds (1000 by default). The store is
# often not listening yet at the first try, which cost a whole second in ~3 of 8 local starts
# (2.5 s -> 3.6 s). Retrying every 100 ms, 100 times, keeps Ray's 10 s budget. Ray reads
# RAY_<config name> in every process it starts; a value set by the user wins.
LOCAL_RAY_ENV = {
    "RAY_raylet_client_connect_timeout_milliseconds": "100",
    "RAY_raylet_client_num_connect_attempts": "100",
}


class _Starter:
    """The background ray.init: its thread, the error it raised, and the event ending the thread.

    The thread lives until the session ends: Ray starts GCS and the raylet with a parent-death
    signal, which on Linux fires when the *thread* that spawned them exits.
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.booted = threading.Event()
        self.release = threading.Event()
        self.stopping = threading.Event()  # set once the raylets to wait for are known
        self.raylets: list = []  # psutil.Process of the raylet this process started, if any


_pending: _Starter | None = None
_closing: list[threading.Thread] = []  # boot threads still shutting their Ray down
_exit_follows = False


def exit_follows_session() -> None:
    """Declare that this process exits as soon as its Ray session ends (the `clipmill` script).

    The session's end then waits for the raylet to exit (it stops the workers and agents) but
    not for the rest of Ray's shutdown: over a second of pure waiting, mostly the autoscaler
    monitor ignoring SIGTERM for a second before it is killed. Nothing is lost: every result is
    written before the session ends, and GCS, monitor and dashboard die with this process
    (parent-death signal). A later session in the same process still waits for the earlier
    shutdown before it starts.
    """
    global _exit_follows
    _exit_follows = True


def _await_closing() -> None:
    while _closing:
        _closing.pop().join()


def _raylet_children() -> list:
    import psutil

    with suppress(psutil.Error):
        return [p for p in psutil.Process().children() if p.name() == "raylet"]
    return []


def _await_raylet_exit(starter: _Starter, timeout_s: float = 30.0) -> None:
    """Wait until the raylet this process started has exited: it stops its workers and agents.

    What remains of the shutdown (GCS, the autoscaler monitor, log monitor, dashboard) is
    started by this process with a parent-death signal and goes when it exits.
    """
    import psutil

    starter.stopping.wait(timeout_s)
    psutil.wait_procs(starter.raylets, timeout=timeout_s)


def ray_ready() -> None:
    """Block until a background Ray start has finished; raise its error if it failed."""
    starter = _pending
    if starter is None or starter.thread is None:
        return
    starter.booted.wait()
    if starter.error is not None:
        raise RuntimeError(f"Ray failed to start: {starter.error}") from starter.error


def release_ray() -> None:
    """Say this process needs Ray no more: a background-started Ray shuts down meanwhile.

    Shutting Ray down mostly waits for its processes to exit (over a second); the runner calls
    this as soon as the stage has returned, so the shutdown overlaps the recording of the
    stage's metrics and the end of its MLflow run. The session's end waits for the shutdown.
    No effect on a Ray this process joined or started in front.
    """
    starter = _pending
    if starter is not None and starter.thread is not None:
        starter.booted.wait()
        starter.release.set()


def _init_kwargs(settings: Settings) -> dict:
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if settings.ray_address:
        kwargs["address"] = settings.ray_address
        if settings.remote_data and settings.data_root:
            # the cluster's workers map the driver's cache paths to the bucket data root the
            # same way, and fetch what their node lacks (tasks/io/nodefetch.py)
            kwargs["runtime_env"] = {
                "env_vars": {
                    "CLIPMILL_DATA_ROOT": settings.data_root,
                    "CLIPMILL_DATA_CACHE": str(settings.local_data),
                }
            }
    else:
        kwargs["num_cpus"] = settings.ray_num_cpus
        kwargs["object_store_memory"] = settings.ray_object_store_mb * 1024 * 1024
    return kwargs


class _NoThreadWarning(logging.Filter):
    """ray.init off the main thread warns that it set no SIGTERM handler; we set it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _start_in_background(kwargs: dict) -> _Starter:
    import ray

    for name in _SHARED_IMPORTS:
        with suppress(ImportError):
            importlib.import_module(name)
    if threading.current_thread() is threading.main_thread():
        # What ray.init does on the main thread: SIGTERM exits, so `finally` blocks run.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    logging.getLogger("ray._private.worker").addFilter(_NoThreadWarning())
    starter = _Starter()

    def boot() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # handed to ray_ready(), which raises it in the caller
            starter.error = exc
        finally:
            starter.booted.set()
        starter.release.wait()  # keep Ray's processes' parent thread alive until shutdown
        starter.raylets = _raylet_children()
        starter.stopping.set()
        if ray.is_initialized():
            ray.shutdown()

    starter.thread = threading.Thread(target=boot, name="ray-init", daemon=True)
    starter.thread.start()
    return starter


@contextmanager
def ray_session(settings: Settings | None = None, background: bool = False) -> Iterator[None]:
    """Join the Ray that is already up (tests, a driver on a cluster) or start one for this run.

    With `background=True` the start runs in a thread and the body must call `ray_ready()`
    before its first Ray call.
    """
    global _pending
    settings = settings or get_settings()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not settings.ray_address:
        # A local Ray stays on the loopback address (Ray's single-node mode). Not when joining
        # a cluster: Ray would then take 127.0.0.1 for this node and find none of its nodes.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    _await_closing()
    if ray.is_initialized():
        yield
        return
    kwargs = _init_kwargs(settings)
    if "address" not in kwargs:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    _quiet_ray_data()
    if background:
        _pending = _start_in_background(kwargs)
    else:
        ray.init(**kwargs)
    try:
        yield
    finally:
        starter, _pending = _pending, None
        if starter is not None and starter.thread is not None:
            starter.release.set()  # the boot thread shuts Ray down (unless release_ray() did)
            _closing.append(starter.thread)
            if _exit_follows:
                _await_raylet_exit(starter)
            else:
                _await_closing()
        elif ray.is_initialized():
            ray.shutdown()


def _quiet_ray_data() -> None:
    """Progress bars of Ray Data flood non-interactive logs (CI, DVC).

    Through the environment when Ray Data is not imported yet: importing it only to set a
    flag would cost stages that never use it more than half a second.
    """
    quiet = not sys.stderr.isatty()
    if "ray.data" not in sys.modules:
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1" if quiet else "0")
        return
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = not quiet
