"""The flow's stage DAG (flows/dag.py): the graph read from dvc.yaml is DVC's own, the scheduler
runs independent stages side by side and dependent ones after their upstream, a failure holds
back only its downstream stages, `jobs=1` is the pipeline order; and (slow) the real flow on toy
stages in a throwaway DVC project: overlap, a clean `dvc status`, a second run that does nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from flows.dag import DagError, dvc_graph, run_dag, selected_upstream
from tasks import PROJECT_ROOT
from tasks.registry import STAGES

EXPERTS = ["expert_fashion", "expert_emoji", "expert_tuxpaint", "expert_openclipart"]
MAIN_BRANCH = ["recaption", "curate", "train", "evaluate"]


def _dvc() -> str:
    return str(Path(sys.executable).with_name("dvc"))


# --- the graph ------------------------------------------------------------------------------


def test_graph_from_dvc_yaml_is_dvcs_own():
    """Every edge `dvc dag` draws for this project, and no other."""
    dot = subprocess.run(
        [_dvc(), "dag", "--dot"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    theirs = {(a, b) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}
    graph = dvc_graph(PROJECT_ROOT / "dvc.yaml")
    ours = {(up, name) for name, ups in graph.items() for up in ups}
    assert len(theirs) > 40
    assert ours == theirs


def test_merge_branch_is_independent_of_the_main_branch():
    graph = dvc_graph(PROJECT_ROOT / "dvc.yaml")
    default = [s for s, spec in STAGES.items() if spec.in_default_run]
    ups = selected_upstream(graph, default, {s: STAGES[s].upstream for s in default})
    for expert in EXPERTS:
        assert graph[expert] == {"sample", "teacher"}
        assert ups[expert] == {"sample", "crawl", "decontaminate", "teacher"}
    assert set(EXPERTS) <= graph["merge"]  # data/models/experts holds each expert's out
    assert "merge" in graph["evaluate_merge"]
    assert ups["evaluate_merge"] == {"sample", "crawl", "decontaminate", "teacher", "merge"} | set(
        EXPERTS
    )
    for stage in [*EXPERTS, "merge", "evaluate_merge"]:
        assert not ups[stage] & set(MAIN_BRANCH), stage
    assert ups["evaluate"] >= {"train", "curate", "recaption", "teacher"}
    assert not ups["evaluate"] & {*EXPERTS, "merge", "evaluate_merge"}


def test_registry_upstream_adds_no_edge_dvc_lacks():
    """The registry's `upstream` (what each stage reads) is implied by dvc.yaml's graph."""
    graph = dvc_graph(PROJECT_ROOT / "dvc.yaml")
    everything = list(STAGES)
    plain = selected_upstream(graph, everything)
    extra = selected_upstream(graph, everything, {s: STAGES[s].upstream for s in everything})
    assert plain == extra


def test_selection_keeps_order_through_unselected_stages(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "a": {"cmd": "x", "outs": ["data/a"]},
                    "b": {"cmd": "x", "deps": ["data/a/part"], "outs": [{"data/b": {}}]},
                    "c": {"cmd": "x", "deps": ["data/b", "code.py"], "metrics": ["m/c.json"]},
                    "d": {"cmd": "x", "deps": ["data"], "outs": ["out/d"]},
                }
            }
        )
    )
    graph = dvc_graph(dvc_yaml)
    # a dep under an out (data/a/part) and an out under a dep (data/b under data) both count
    assert graph == {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"a", "b"}}
    assert selected_upstream(graph, ["a", "c"]) == {"a": set(), "c": {"a"}}
    with pytest.raises(DagError, match="not in dvc.yaml"):
        selected_upstream(graph, ["a", "zzz"])
    with pytest.raises(DagError, match="cycle"):
        selected_upstream({"a": {"b"}, "b": {"a"}}, ["a"])
    dvc_yaml.write_text("stages:\n  t:\n    foreach: [1, 2]\n    do: {cmd: x}\n")
    with pytest.raises(DagError, match="foreach"):
        dvc_graph(dvc_yaml)


# --- the scheduler, on stand-in stages -------------------------------------------------------


class _Recorder:
    """Stand-in stages: each sleeps, records (start, end) and how many ran at once."""

    def __init__(self, sleep_s: float = 0.25, fail: frozenset[str] = frozenset()) -> None:
        self.sleep_s, self.fail = sleep_s, fail
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.lock = threading.Lock()
        self.spans: dict[str, tuple[float, float]] = {}
        self.started: list[str] = []
        self.now = self.most = 0

    def _body(self, stage: str) -> dict[str, str]:
        with self.lock:
            self.started.append(stage)
            self.now += 1
            self.most = max(self.most, self.now)
        start = time.monotonic()
        time.sleep(self.sleep_s)
        with self.lock:
            self.now -= 1
            self.spans[stage] = (start, time.monotonic())
        if stage in self.fail:
            raise RuntimeError(f"{stage} broke")
        return {"stage": stage}

    def submit(self, stage: str) -> Future:
        return self.pool.submit(self._body, stage)


# a -> (b, c) -> d ; e independent of everything
DIAMOND = {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": set()}
ORDER = ["a", "b", "c", "d", "e"]


def _overlap(x: tuple[float, float], y: tuple[float, float]) -> bool:
    return x[0] < y[1] and y[0] < x[1]


def test_independent_stages_overlap_and_dependents_wait():
    rec = _Recorder()
    run = run_dag(ORDER, DIAMOND, 2, rec.submit)
    assert run.ok and list(run.results) != [] and set(run.results) == set(ORDER)
    assert run.results["d"] == {"stage": "d"}
    assert rec.most == 2  # never more than jobs
    assert _overlap(rec.spans["a"], rec.spans["e"])  # both ready at once
    assert _overlap(rec.spans["b"], rec.spans["c"])
    for up, down in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]:
        assert rec.spans[up][1] <= rec.spans[down][0], (up, down)
    assert rec.started[:2] == ["a", "e"]  # ready stages start in pipeline order
    assert set(run.times) == set(ORDER)


def test_one_job_keeps_the_pipeline_order():
    rec = _Recorder(sleep_s=0.02)
    run = run_dag(ORDER, DIAMOND, 1, rec.submit)
    assert run.ok and rec.started == ORDER and rec.most == 1
    spans = [rec.spans[s] for s in ORDER]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_failure_holds_back_its_downstream_only():
    rec = _Recorder(fail=frozenset({"b"}))
    events: list[tuple[str, str]] = []
    run = run_dag(ORDER, DIAMOND, 2, rec.submit, lambda s, e: events.append((s, e)))
    assert not run.ok
    assert list(run.failed) == ["b"] and "b broke" in str(run.failed["b"])
    assert run.skipped == ["d"] and "d" not in rec.started
    assert set(run.results) == {"a", "c", "e"}  # c ran beside b and finished; e kept going
    assert ("b", "failed") in events and ("d", "skipped") in events
    assert "stage 'b' failed" in run.summary() and "d" in run.summary()


def test_a_stage_that_cannot_be_submitted_fails_like_one_that_ran():
    def submit(stage: str) -> Future:
        if stage == "a":
            raise OSError("no dvc")
        done: Future = Future()
        done.set_result({})
        return done

    run = run_dag(ORDER, DIAMOND, 2, submit)
    assert list(run.failed) == ["a"] and run.skipped == ["b", "c", "d"]
    assert set(run.results) == {"e"}
    with pytest.raises(ValueError, match="jobs"):
        run_dag(ORDER, DIAMOND, 0, submit)


# --- the real flow on toy stages (slow: a Prefect test server, DVC and MLflow per stage) ------

_TOY_RUN = """
import sys
sys.path.insert(0, {tests!r})
from tasks.registry import STAGES, StageSpec
name = sys.argv[1]
STAGES[name] = StageSpec(name, "toy_stage:ToyParams", "toy_stage:run", code=(), uses_ray=False)
from tasks.cli import main
raise SystemExit(main(["run", name]))
"""

# a -> (b, c) -> d: b and c read only a's output, d reads both
TOY_DAG = {
    "a": [],
    "b": ["data/a"],
    "c": ["data/a"],
    "d": ["data/b", "data/c"],
}
SLEEP_S = {"a": 0.5, "b": 4.0, "c": 4.0, "d": 0.5}

_FLOW_SCRIPT = """
import json, sys
import yaml
sys.path.insert(0, {tests!r})
from pathlib import Path
from prefect.testing.utilities import prefect_test_harness
from tasks.registry import STAGES, StageSpec
from flows.pipeline import PipelineFailed, pipeline

STAGES.clear()
for name in {names!r}:
    STAGES[name] = StageSpec(name, "toy_stage:ToyParams", "toy_stage:run", code=(), uses_ray=False)

def metrics():
    return {{p.stem: json.loads(p.read_text()) for p in sorted(Path("metrics").glob("*.json"))}}

def edit(stage, **values):
    path = Path("params") / f"{{stage}}.yaml"
    path.write_text(yaml.safe_dump({{**yaml.safe_load(path.read_text()), **values}}))

out = {{}}
with prefect_test_harness(server_startup_timeout=180):
    out["first"] = pipeline(jobs=2)
    out["first_metrics"] = metrics()
    out["second"] = pipeline(jobs=2)
    out["second_metrics"] = metrics()
    edit("b", label="changed")
    edit("c", fail=True)
    try:
        pipeline(jobs=2)
        out["failed"] = None
    except PipelineFailed as exc:
        out["failed"] = {{"message": str(exc), "results": sorted(exc.results)}}
    out["failed_metrics"] = metrics()
    edit("c", fail=False)
    out["serial"] = pipeline(jobs=1, force=True)
    out["serial_metrics"] = metrics()
print("RESULT", json.dumps(out, default=str))
"""


def _toy_env(root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIPMILL_", "MLFLOW_", "DVC_STAGE"))
    }
    env.update(
        CLIPMILL_ROOT=str(root),
        CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        PYTHONPATH=f"{PROJECT_ROOT}{os.pathsep}{PROJECT_ROOT / 'tests'}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture(scope="module")
def toy_flow(tmp_path_factory):
    """A DVC project of four toy stages; the flow run four times in one Prefect test server."""
    root = tmp_path_factory.mktemp("dagproject")
    tests = str(PROJECT_ROOT / "tests")
    (root / "toy_run.py").write_text(_TOY_RUN.format(tests=tests))
    (root / "params").mkdir()
    stages = {}
    for name, deps in TOY_DAG.items():
        (root / "params" / f"{name}.yaml").write_text(
            f"out_file: data/{name}/out.txt\nlabel: {name}\nsleep_s: {SLEEP_S[name]}\n"
        )
        stages[name] = {
            "cmd": f"python toy_run.py {name}",
            "deps": ["toy_run.py", *deps],
            "params": [{f"params/{name}.yaml": None}],
            "outs": [f"data/{name}"],
            "metrics": [{f"metrics/{name}.json": {"cache": False}}],
        }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    env = _toy_env(root)
    subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    script = _FLOW_SCRIPT.format(tests=tests, names=list(TOY_DAG))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return root, json.loads(proc.stdout.split("RESULT", 1)[1]), proc.stdout


def _span(metrics: dict, stage: str) -> tuple[float, float]:
    return metrics[stage]["started_at"], metrics[stage]["ended_at"]


@pytest.mark.slow
def test_flow_runs_independent_stages_side_by_side(toy_flow):
    _, out, stdout = toy_flow
    assert sorted(out["first"]) == ["a", "b", "c", "d"]
    m = out["first_metrics"]
    assert _overlap(_span(m, "b"), _span(m, "c"))  # b and c ran at the same time
    assert m["d"]["started_at"] >= max(m["b"]["ended_at"], m["c"]["ended_at"])
    assert m["b"]["started_at"] >= m["a"]["ended_at"]
    assert "[b] " in stdout and "[c] " in stdout  # side by side: lines carry their stage


@pytest.mark.slow
def test_flow_leaves_dvc_clean_and_a_second_run_does_nothing(toy_flow):
    root, out, _ = toy_flow
    assert out["second_metrics"] == out["first_metrics"]  # no stage ran again
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == ["a", "b", "c", "d"]
    status = subprocess.run(
        [_dvc(), "status"], cwd=root, env=_toy_env(root), capture_output=True, text=True
    )
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout


@pytest.mark.slow
def test_flow_failure_names_the_stage_and_holds_back_its_downstream(toy_flow):
    _, out, _ = toy_flow
    failed = out["failed"]
    assert failed is not None, "the flow did not fail"
    assert "stage 'c' failed" in failed["message"] and "d" in failed["message"]
    assert failed["results"] == ["a", "b"]  # b ran beside c and finished
    before, after = out["second_metrics"], out["failed_metrics"]
    assert after["b"]["started_at"] > before["b"]["ended_at"]  # b re-ran (its label changed)
    assert after["d"] == before["d"]  # d was not started


@pytest.mark.slow
def test_flow_with_one_job_runs_in_pipeline_order(toy_flow):
    _, out, _ = toy_flow
    m = out["serial_metrics"]
    spans = [_span(m, s) for s in ["a", "b", "c", "d"]]
    assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:], strict=False))
    assert sorted(out["serial"]) == ["a", "b", "c", "d"]
