"""Overrides run as DVC experiments and leave the params files byte for byte as committed.

The Hydra formatting of `-S` values is checked against DVC's own writer; the experiment runner is
checked end to end on a toy DVC project in a temporary git repository (a stage that records what
it read), so these tests need no real stage data. tests/test_doors.py runs the real flow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from flows.experiments import (
    check_roundtrip,
    experiment_name,
    hydra_value,
    params_kept_intact,
    run_dvc_experiment,
    set_param_args,
)
from tasks.base import ParamsError, ParamsSection, StageParams, set_dotted


class ToySection(ParamsSection):
    size: int = 256  # px
    mode: str = "border"  # how to fit


class ToyParams(StageParams):
    label: str = "toy"  # text written on every line
    count: int = Field(default=3, ge=1)  # lines
    rate: float = 0.1  # a float
    flag: bool = False  # a bool
    tags: list[str] = []  # a list
    section: ToySection = ToySection()  # a nested section


TOY_YAML = """\
# toy params: the comments must survive an overridden run
label: toy  # text
count: 3  # lines
rate: 0.1
flag: false
tags: [a, b]
section:
  size: 128  # px
  mode: crop
"""


def _expected(path: Path, overrides: dict[str, Any]) -> ToyParams:
    data = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return ToyParams.validate_mapping(data, source="test")


@pytest.mark.parametrize(
    "overrides",
    [
        {"label": "it's"},
        {"label": "C:\\path\\"},
        {"label": 'say "hi", #not a comment'},
        {"label": "${not.an.interpolation}"},
        {"label": "a\\'b"},
        {"label": ""},
        {"label": "007"},
        {"label": "true"},
        {"label": "ü€ line\nbreak"},
        {"rate": 1e-05},
        {"rate": 1e20},
        {"rate": 3},
        {"flag": True, "count": 7},
        {"tags": ["x y", "it's", "1"]},
        {"tags": []},
        {"section.size": 64},
    ],
)
def test_values_reach_the_params_file_as_validated(tmp_path: Path, overrides: dict) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML)
    check_roundtrip(ToyParams, path, overrides, _expected(path, overrides))
    assert path.read_text() == TOY_YAML, "the check works on a copy"


def test_a_section_given_whole_is_refused_when_dvc_would_merge_it(tmp_path: Path) -> None:
    """`-S section={size: 64}` merges into the YAML's section (mode stays `crop`); the flow's
    validation replaced it (mode back to its default): the difference is caught before any work."""
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_YAML)
    overrides = {"section": {"size": 64}}
    with pytest.raises(ParamsError, match="set leaf keys instead"):
        check_roundtrip(ToyParams, path, overrides, _expected(path, overrides))


def test_hydra_value_formats() -> None:
    assert hydra_value(None) == "null"
    assert hydra_value(True) == "true"
    assert hydra_value([1, "a"]) == "[1, 'a']"
    assert set_param_args("params/x.yaml", {"a.b": 2}) == ["-S", "params/x.yaml:a.b=2"]
    with pytest.raises(ParamsError):
        hydra_value(float("nan"))


def test_experiment_names() -> None:
    assert experiment_name("balance-t200") == "balance-t200"
    assert experiment_name(None).startswith("clipmill-")
    for bad in ("a b", "../x", "x.lock", "-x", ""):
        with pytest.raises(ParamsError):
            experiment_name(bad)


def test_params_are_put_back_even_when_the_block_fails(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1  # kept\n")
    with pytest.raises(RuntimeError), params_kept_intact(tmp_path):
        (tmp_path / "a.yaml").write_text("x: 2\n")
        raise RuntimeError("stage failed")
    assert (tmp_path / "a.yaml").read_text() == "x: 1  # kept\n"


# --- end to end on a toy DVC project --------------------------------------------------------

_STAGE_SCRIPT = """\
import json, os, sys, yaml
p = yaml.safe_load(open("params/toy.yaml"))
if p["count"] < 1:
    sys.exit("count must be >= 1")
os.makedirs("out", exist_ok=True)
open("out/toy.txt", "w").write("".join(f"{p['label']} {i}\\n" for i in range(p["count"])))
os.makedirs("metrics", exist_ok=True)
json.dump({"lines": p["count"], "exp": os.environ.get("DVC_EXP_NAME", "")},
          open("metrics/toy.json", "w"))
"""


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.fixture()
def toy_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A committed git + DVC project with one toy stage; HOME without a git identity, so the
    experiment commit also exercises the fallback identity a fresh CI machine needs."""
    root = tmp_path / "repo"
    (root / "params").mkdir(parents=True)
    (root / "params" / "toy.yaml").write_text(TOY_YAML)
    (root / "stage.py").write_text(_STAGE_SCRIPT)
    dvc_yaml = {
        "stages": {
            "toy": {
                "cmd": f"{sys.executable} stage.py",
                "deps": ["stage.py"],
                "params": [{"params/toy.yaml": None}],
                "outs": ["out"],
                "metrics": [{"metrics/toy.json": {"cache": False}}],
            }
        }
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_", "CLIPMILL_"))}
    env.update(
        HOME=str(home), DVC_NO_ANALYTICS="1", PATH=f"{Path(_bin('dvc')).parent}:{env['PATH']}"
    )
    who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (
        ["git", "init", "-q"],
        [_bin("dvc"), "init", "-q"],
        [_bin("dvc"), "repro", "-q"],
        ["git", "add", "-A"],
        ["git", *who, "commit", "-q", "-m", "toy"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root, env


def _git_diff_params(root: Path, env: dict[str, str]) -> str:
    return subprocess.run(
        ["git", "diff", "--", "params/"], cwd=root, env=env, capture_output=True, text=True
    ).stdout


def _experiment_params(root: Path, env: dict[str, str], name: str) -> dict:
    proc = subprocess.run(
        [_bin("dvc"), "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True
    )
    for baseline in json.loads(proc.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                if rev["name"] == name:
                    return rev["data"]["params"]["params/toy.yaml"]["data"]
    raise AssertionError(f"experiment {name!r} not in `dvc exp show`: {proc.stdout[:2000]}")


def test_experiment_runs_the_override_and_leaves_params_as_committed(toy_repo) -> None:
    root, env = toy_repo
    args = set_param_args("params/toy.yaml", {"count": 5, "label": "it's"})
    assert run_dvc_experiment(root, ["toy"], args, "toy-five", env, dvc=_bin("dvc")) == 0

    assert (root / "params" / "toy.yaml").read_text() == TOY_YAML
    assert _git_diff_params(root, env) == ""
    # The stage ran with the override, under the experiment's name (what MLflow runs are tagged
    # with, see tasks.tracking.DVC_EXP_TAGS), and DVC recorded the values.
    assert (root / "out" / "toy.txt").read_text().splitlines() == [f"it's {i}" for i in range(5)]
    assert json.loads((root / "metrics" / "toy.json").read_text()) == {
        "lines": 5,
        "exp": "toy-five",
    }
    recorded = _experiment_params(root, env, "toy-five")
    assert recorded["count"] == 5 and recorded["label"] == "it's"


def test_a_failed_experiment_leaves_params_as_committed(toy_repo) -> None:
    root, env = toy_repo
    args = set_param_args("params/toy.yaml", {"count": 0})
    assert run_dvc_experiment(root, ["toy"], args, "toy-zero", env, dvc=_bin("dvc")) != 0
    assert (root / "params" / "toy.yaml").read_text() == TOY_YAML
    assert _git_diff_params(root, env) == ""
