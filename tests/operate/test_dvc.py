"""DVC as a team uses it: `dvc plots show` renders dvc.yaml's plots (training curves, curate's
funnel) from files in the layout the stages write, and `dvc exp run -S` sweeps queue one
experiment per value and run them, each recorded with its params and metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.operate.conftest import bin_path, make_project, project_env


def _dvc(args: list[str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run(
        [bin_path("dvc"), *args],
        cwd=cwd,
        env=project_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"dvc {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_dvc_plots_show_renders_training_curves_and_the_curate_funnel(tmp_path: Path) -> None:
    from tasks.curate.report import write_report

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _dvc(["init", "-q"], tmp_path)
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": spec["plots"]}))
    funnel = [
        {"step": "input", "left": 100, "dropped": {}},
        {"step": "basic", "left": 60, "dropped": {"too_few_words": 40}},
        {"step": "balance", "left": 25, "dropped": {"balance": 35}},
    ]
    write_report(tmp_path / "data" / "curate" / "report", funnel, {}, {})
    for model, losses in (("teacher", [4.0, 3.1, 2.2]), ("train", [4.1, 3.9, 3.5])):
        folder = tmp_path / "data" / "models" / model
        folder.mkdir(parents=True)
        curve = [{"step": i, "loss": v} for i, v in enumerate(losses)]
        (folder / "loss_history.json").write_text(json.dumps(curve))

    shown = json.loads(_dvc(["plots", "show", "--json"], tmp_path))
    assert not shown.get("errors"), shown["errors"]
    curves = shown["data"]["training curves"][0]["content"]["data"]["values"]
    assert sorted((v["filename"], v["step"], v["loss"]) for v in curves) == sorted(
        (f"{m}/loss_history.json", i, v)
        for m, losses in (("teacher", [4.0, 3.1, 2.2]), ("train", [4.1, 3.9, 3.5]))
        for i, v in enumerate(losses)
    )
    bars = shown["data"]["curate funnel"][0]["content"]["data"]["values"]
    assert [(b["step"], b["left"]) for b in bars] == [
        ("input", 100),
        ("basic", 60),
        ("balance", 25),
    ]
    html = _dvc(["plots", "show", "-o", str(tmp_path / "plots")], tmp_path)
    page = tmp_path / "plots" / "index.html"
    assert page.exists(), html
    assert "training curves" in page.read_text() and "curate funnel" in page.read_text()


@pytest.mark.slow
def test_dvc_exp_run_sweep_runs_one_experiment_per_value(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`dvc exp run --queue -S 'params/sample.yaml:seed=choice(1,2)'` then `--run-all`: two
    experiments, each with its own seed recorded; the params file is left as committed. (Slow:
    two sample builds; the single-experiment path runs by default in tests/test_doors.py.)"""
    project = make_project(tmp_path_factory.mktemp("sweep"))
    committed = (project / "params" / "sample.yaml").read_bytes()
    _dvc(["exp", "run", "--queue", "-S", "params/sample.yaml:seed=choice(1,2)"], project)
    _dvc(["exp", "run", "--run-all", "--jobs", "1"], project, timeout=1200)
    shown = json.loads(_dvc(["exp", "show", "--json"], project))
    seeds = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                params = rev["data"]["params"]["params/sample.yaml"]["data"]
                if rev["data"].get("status", "Success") == "Success":
                    seeds.append(params["seed"])
    assert sorted(seeds) == [1, 2], json.dumps(shown)[:3000]
    assert (project / "params" / "sample.yaml").read_bytes() == committed
    shutil.rmtree(project, ignore_errors=True)
