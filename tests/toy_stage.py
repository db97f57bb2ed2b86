"""A toy stage for testing the runner without any real stage's data."""

from __future__ import annotations

import time

from pydantic import Field

from tasks.base import StageParams
from tasks.io.paths import resolve_path


class ToyParams(StageParams):
    out_file: str = "data/toy/out.txt"  # where the toy writes its output
    count: int = Field(default=3, ge=1, le=100)  # how many lines to write
    label: str = "toy"  # text written on every line
    fail: bool = False  # raise after writing, to test how a failed run is recorded
    # seconds of "work" before writing (> 0: the metrics get the wall-clock start and end, so a
    # test can see whether two stages overlapped)
    sleep_s: float = Field(default=0.0, ge=0, le=60)


def run(params: ToyParams) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.io import atomic_write_text
    from tasks.tracking import log_figure

    engines = seen_engines()  # what the runner guarantees while a stage runs
    started = time.time()
    time.sleep(params.sleep_s)
    ended = time.time()
    timing = {"started_at": started, "ended_at": ended} if params.sleep_s > 0 else {}
    out = resolve_path(params.out_file)
    atomic_write_text(out, "".join(f"{params.label} {i}\n" for i in range(params.count)))
    fig, ax = plt.subplots()
    ax.bar(["lines"], [params.count])
    log_figure(fig, "toy.png")
    plt.close(fig)
    if params.fail:
        raise ValueError("toy asked to fail")
    return {"lines": params.count, "nested": {"ratio@1": 0.5}, **engines, **timing}


def seen_engines() -> dict[str, int]:
    """1/0 per engine: Ray initialised in this process, an MLflow run active in this thread.

    Reads the engines' own state (never starts one): `ray` is only looked at once imported.
    """
    import sys

    import mlflow

    ray = sys.modules.get("ray")
    return {
        "engine_ray_up": int(ray is not None and ray.is_initialized()),
        "engine_mlflow_run": int(mlflow.active_run() is not None),
    }


class InProcessToyParams(ToyParams):
    """The toy with params that need no Ray (like train with num_workers=0)."""

    def needs_ray(self) -> bool:
        return False
