"""`clipmill run train` with phase marks: where the whole command's time goes, for
benchmarks/train_overhead.py (`bare_open_clip_whole`'s `phases` extra).

Runs the same command as the console script (tasks.cli.main, then a fast exit), with the runner's
and the train stage's functions wrapped from outside (no clipmill code changes) to note, at each
boundary, the wall clock and the CPU seconds of the whole process (every thread: the export
prefetch included). Prints one JSON line `PHASES {...}` on stderr, after the metrics on stdout.
Local mode through the runner trains in a child process (tasks/train/local.py), so the phases
are the parent's, and its waits on the child:
`startup` (interpreter + the CLI's imports), `child_start` (the training process forked or
spawned, inside the runner), `runner_before_stage` (params, provenance tags, MLflow imported,
store opened, run started: beside the child's imports), `wait_prepared` (the parent waiting for
the child's imports and preflight: what MLflow's start-up did not hide), `train` (prepared to
done: model built, steps relayed to MLflow, checkpoint, model folder), `finish` (tags, loss plot,
MLflow model logged and registered, of which `register_model` and `log_loss_plot` are listed
apart), `runner_after_stage` (metrics file, artifact, run ended, child joined). `whole_to_exit`
adds `children_cpu_s`: the CPU seconds of the child processes (the training process, git), from
getrusage once they were waited for. Without the child (Ray Train, or an older checkout) the
in-process spans `preflight` and `launch` are reported instead.
The bare script's counterpart of `startup + child_start + wait_prepared` is its imports; of
`train`, its loop and checkpoint; it has nothing for the rest.
Usage: python benchmarks/train_phases.py run train [-s key=value ...]
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

MARKS: list[tuple[str, float, float]] = []  # (label, wall since process start, process CPU s)
_CREATED = psutil.Process().create_time()


def mark(label: str) -> None:
    MARKS.append((label, time.time() - _CREATED, time.process_time()))


def wrap(module: Any, name: str, label: str) -> None:
    """Mark `label:start` and `label:end` around calls of module.name (looked up by callers)."""
    inner: Callable[..., Any] = getattr(module, name)

    @functools.wraps(inner)
    def marked(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label}:start")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(f"{label}:end")

    setattr(module, name, marked)


def phases() -> dict[str, dict[str, float]]:
    """Wall and CPU seconds per phase from the marks (first start to last end of each label)."""
    at = {label: (wall, cpu) for label, wall, cpu in MARKS}
    spans = {
        "startup": ("process:start", "cli:imported"),
        "child_start": ("prestart:start", "prestart:end"),
        "runner_before_stage": ("run_stage:start", "stage:start"),
        "wait_prepared": ("wait_prepared:start", "wait_prepared:end"),
        "train": ("wait_done:start", "wait_done:end"),
        "preflight": ("preflight:start", "preflight:end"),  # in-process only
        "launch": ("launch:start", "launch:end"),  # in-process only
        "finish": ("finish:start", "finish:end"),
        "log_loss_plot": ("log_loss_plot:start", "log_loss_plot:end"),
        "register_model": ("register_model:start", "register_model:end"),
        "runner_after_stage": ("stage:end", "run_stage:end"),
    }
    out = {}
    for name, (a, b) in spans.items():
        if a in at and b in at:
            out[name] = {
                "wall_s": round(at[b][0] - at[a][0], 2),
                "cpu_s": round(at[b][1] - at[a][1], 2),
            }
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["whole_to_exit"] = {
        "wall_s": round(at["exit"][0], 2),
        "cpu_s": round(at["exit"][1], 2),
        "children_cpu_s": round(children.ru_utime + children.ru_stime, 2),
    }
    return out


def main() -> None:
    MARKS.append(("process:start", 0.0, 0.0))
    import tasks.cli
    import tasks.runner
    import tasks.train.stage
    import tasks.train.tracking
    from tasks.raysession import exit_follows_session

    mark("cli:imported")
    wrap(tasks.runner, "run_stage", "run_stage")
    wrap(tasks.train.stage, "run", "stage")
    wrap(tasks.train.stage, "preflight", "preflight")
    wrap(tasks.train.stage, "launch", "launch")
    wrap(tasks.train.stage, "finish", "finish")
    wrap(tasks.train.tracking, "register_model", "register_model")
    wrap(tasks.train.tracking, "log_loss_plot", "log_loss_plot")
    with contextlib.suppress(ImportError):  # the training process of local mode
        import tasks.train.local

        wrap(tasks.train.local.LocalTraining, "__init__", "prestart")
        wrap(tasks.train.local.LocalTraining, "wait_prepared", "wait_prepared")
        wrap(tasks.train.local.LocalTraining, "wait_done", "wait_done")
    # the registry hands the runner `tasks.train.stage:run` by name: resolved after the wrap
    exit_follows_session()
    code = tasks.cli.main(sys.argv[1:])
    mark("exit")
    sys.stdout.flush()
    print("PHASES " + json.dumps(phases()), file=sys.stderr, flush=True)
    os._exit(code)


if __name__ == "__main__":
    main()
