"""Ray booted in the background while the caller works: usable after ray_ready(), errors surface.

Each case runs in a fresh interpreter: the test session's own Ray is already up, and the point
is a process that starts its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tasks import PROJECT_ROOT


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_ADDRESS": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=PROJECT_ROOT,
        env=full_env,
    )


def test_background_start_runs_tasks_and_shuts_down_cleanly():
    proc = _python(
        """
        import threading, time
        import ray
        from tasks.raysession import ray_ready, ray_session
        from tasks.settings import Settings

        with ray_session(Settings(ray_num_cpus=1), background=True):
            ray_ready()
            assert ray.is_initialized()
            # the boot thread is alive while Ray runs: GCS and raylet die with their parent thread
            assert any(t.name == "ray-init" for t in threading.enumerate())
            time.sleep(1.0)  # longer than a dead parent thread would let GCS live
            square = ray.remote(lambda x: x * x)
            assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
        assert not ray.is_initialized()
        assert not any(t.name == "ray-init" for t in threading.enumerate())
        print("OK")
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout.split()
    assert "SIGTERM handler is not set" not in proc.stderr


def test_background_start_failure_is_raised_by_ray_ready():
    proc = _python(
        """
        from tasks.raysession import ray_ready, ray_session
        from tasks.settings import Settings

        try:
            with ray_session(Settings(ray_num_cpus=1, ray_object_store_mb=1), background=True):
                ray_ready()
        except RuntimeError as exc:
            print("RAISED", str(exc)[:60])
        else:
            print("NOT RAISED")
        """
    )
    assert "RAISED Ray failed to start" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_release_ray_shuts_down_while_the_caller_goes_on():
    proc = _python(
        """
        import time
        import ray
        from tasks.raysession import ray_ready, release_ray, ray_session
        from tasks.settings import Settings

        with ray_session(Settings(ray_num_cpus=1), background=True):
            ray_ready()
            assert ray.get(ray.remote(lambda: 7).remote()) == 7
            started = time.perf_counter()
            release_ray()
            returned_after = time.perf_counter() - started
        assert not ray.is_initialized()
        print("RETURNED", returned_after < 0.5)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RETURNED True" in proc.stdout


@pytest.mark.slow  # twenty seconds; the two shutdown paths above run by default
def test_exit_after_session_leaves_no_ray_process_behind():
    """The CLI does not wait for Ray's graceful exit; its processes must still all go."""
    proc = _python(
        """
        import os
        import psutil, ray
        from tasks.raysession import exit_follows_session, ray_ready, ray_session
        from tasks.settings import Settings

        exit_follows_session()
        with ray_session(Settings(ray_num_cpus=1), background=True):
            ray_ready()
            assert ray.get(ray.remote(lambda: 7).remote()) == 7
            spawned = psutil.Process().children(recursive=True)
        with ray_session(Settings(ray_num_cpus=1), background=True):  # waits for the first
            ray_ready()
            assert ray.get(ray.remote(lambda: 8).remote()) == 8
            spawned += psutil.Process().children(recursive=True)
        print("PIDS", " ".join(str(p.pid) for p in spawned), flush=True)
        os._exit(0)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids = [int(p) for p in proc.stdout.split("PIDS", 1)[1].split("\n")[0].split()]
    assert len(pids) >= 4  # GCS, raylet, workers, agents...: all of them children of the driver
    import psutil

    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [
            p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
        time.sleep(0.2)
    assert not alive, (
        f"Ray processes outlived the driver: {[(p, psutil.Process(p).cmdline()[:3], psutil.Process(p).status()) for p in alive]}"
    )
