"""The stages' DAG as DVC sees it, and a scheduler that runs it with at most `jobs` stages at once.

Why: the flow used to run the selected stages one after the other, so on a machine with spare
cores the merge branch (expert_* -> merge -> evaluate_merge) waited for the main branch
(recaption -> curate -> train -> evaluate) although neither reads the other's outputs. Each stage
still runs as its own `dvc repro --single-item STAGE`: DVC holds its repo lock only while it
checks and commits a stage (`dvc --wait-for-lock` makes a second process wait for it instead of
failing) and guards every running stage's deps and outs with read/write locks, so two stages
that share no output can run side by side for real.

The graph is read from dvc.yaml the way DVC builds its own (`dvc dag`): a stage depends on
another when one of its deps and one of the other's outs (metrics and plots included) are the
same path or one lies under the other (`data/models/experts` and `data/models/experts/fashion`).
The registry's `upstream` (stages whose outputs a stage reads) is added on top, so a read that
dvc.yaml would forget to declare still orders the stages. tests/test_flow_dag.py checks the
result against `dvc dag` for this project.
"""

from __future__ import annotations

import posixpath
import queue
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml


class DagError(ValueError):
    """dvc.yaml cannot be read as a plain stage graph, or a stage is not in it."""


class StageFuture(Protocol):
    """What `run_dag` needs of a submitted stage: a Prefect future or a concurrent.futures one."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def result(self) -> Any: ...


def _norm(path: str) -> str:
    return posixpath.normpath(str(path).strip()).removeprefix("./")


def _paths(entries: Iterable[Any] | None) -> list[str]:
    """Paths of a deps/outs/metrics/plots list: strings, or one-key mappings (`path: {opts}`)."""
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            out.append(_norm(entry))
        elif isinstance(entry, Mapping):
            out.extend(_norm(key) for key in entry)
    return out


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def dvc_graph(dvc_yaml: Path) -> dict[str, set[str]]:
    """Direct upstream stages of every stage of `dvc_yaml`, from its deps and outs.

    Raises DagError on what this reader does not model (`foreach`/`matrix` templates, `wdir`):
    the flow must not run stages side by side on a graph it guessed.
    """
    data = yaml.safe_load(dvc_yaml.read_text()) or {}
    stages = data.get("stages") or {}
    deps: dict[str, list[str]] = {}
    outs: dict[str, list[str]] = {}
    for name, body in stages.items():
        body = body or {}
        unsupported = {"foreach", "matrix", "wdir"} & set(body)
        if unsupported:
            raise DagError(f"{dvc_yaml}: stage {name!r} uses {sorted(unsupported)}; not modelled")
        deps[name] = _paths(body.get("deps"))
        outs[name] = [p for key in ("outs", "metrics", "plots") for p in _paths(body.get(key))]
    return {
        name: {
            other
            for other in stages
            if other != name and any(_overlap(d, o) for d in deps[name] for o in outs[other])
        }
        for name in stages
    }


def selected_upstream(
    graph: Mapping[str, Iterable[str]],
    selected: list[str],
    extra: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, set[str]]:
    """For each selected stage, the selected stages it depends on, directly or through stages
    that are not selected (`--stages sample evaluate` still runs evaluate after sample).

    `extra` adds edges (the registry's `upstream`). Raises DagError for a selected stage that
    dvc.yaml lacks (it could not be `dvc repro`-ed anyway) and for a cycle.
    """
    missing = [s for s in selected if s not in graph]
    if missing:
        raise DagError(f"stage(s) {missing} are not in dvc.yaml")
    edges: dict[str, set[str]] = {name: set(ups) for name, ups in graph.items()}
    for name, ups in (extra or {}).items():
        if name in edges:
            edges[name] |= {u for u in ups if u in edges}
    closure: dict[str, set[str]] = {}

    def ancestors(name: str, path: tuple[str, ...]) -> set[str]:
        if name in path:
            raise DagError(f"dependency cycle: {' -> '.join((*path, name))}")
        if name not in closure:
            found: set[str] = set()
            for up in edges[name]:
                found |= {up} | ancestors(up, (*path, name))
            closure[name] = found
        return closure[name]

    chosen = set(selected)
    return {name: ancestors(name, ()) & chosen for name in selected}


@dataclass
class DagRun:
    """What a `run_dag` call did: results of finished stages, errors of failed ones, the stages
    not started because an upstream stage failed, and every started stage's (start, end) in
    seconds since the run began."""

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    times: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    def summary(self) -> str:
        """One line naming what failed and what it held back (empty when all ran)."""
        parts = [f"stage {name!r} failed: {exc}" for name, exc in self.failed.items()]
        if self.skipped:
            parts.append(f"not started (upstream failed): {', '.join(self.skipped)}")
        return "; ".join(parts)


def run_dag(
    order: list[str],
    upstream: Mapping[str, set[str]],
    jobs: int,
    submit: Callable[[str], StageFuture],
    on_event: Callable[[str, str], None] | None = None,
) -> DagRun:
    """Run every stage of `order` once its upstream stages finished, at most `jobs` at once.

    Ready stages start in `order` (pipeline order: the main branch before the merge branch), so
    `jobs=1` runs exactly `order`. A failed stage's downstream stages are not started; stages
    already running finish, and stages that do not depend on the failure still run (DVC's
    `repro --keep-going`): their work is committed to dvc.lock, so the rerun after a fix does
    only the failed part. `on_event(stage, "started" | "finished" | "failed" | "skipped")`
    reports progress; it is called from this thread only.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    unknown = set(order) - set(upstream)
    if unknown:
        raise DagError(f"no upstream entry for stage(s) {sorted(unknown)}")
    report = on_event or (lambda stage, event: None)
    run = DagRun()
    done: queue.Queue[tuple[str, Any]] = queue.Queue()
    pending = list(order)
    running: set[str] = set()
    clock = time.perf_counter
    began = clock()
    starts: dict[str, float] = {}

    def finished_callback(stage: str) -> Callable[[Any], None]:
        def callback(future: Any) -> None:  # in the thread that ran the stage
            done.put((stage, (future, clock() - began)))

        return callback

    while pending or running:
        for stage in list(pending):
            ups = upstream[stage]
            if ups & (set(run.failed) | set(run.skipped)):
                pending.remove(stage)
                run.skipped.append(stage)
                report(stage, "skipped")
                continue
            if len(running) >= jobs or not ups <= set(run.results):
                continue
            pending.remove(stage)
            running.add(stage)
            starts[stage] = clock() - began
            report(stage, "started")
            try:
                future = submit(stage)
            except Exception as exc:  # could not even be submitted: a failure of this stage
                running.discard(stage)
                run.failed[stage] = exc
                run.times[stage] = (starts[stage], clock() - began)
                report(stage, "failed")
                continue
            future.add_done_callback(finished_callback(stage))
        if not running:
            # nothing runs and nothing could start: what is left waits on a failure (the pass
            # above skips stages in pipeline order, so this only catches a malformed graph)
            for stage in pending:
                run.skipped.append(stage)
                report(stage, "skipped")
            break
        stage, (future, end) = done.get()
        running.discard(stage)
        run.times[stage] = (starts[stage], end)
        try:
            run.results[stage] = future.result()
        except Exception as exc:
            run.failed[stage] = exc
            report(stage, "failed")
        else:
            report(stage, "finished")
    return run
