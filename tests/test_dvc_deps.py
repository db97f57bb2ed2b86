"""dvc.yaml's code deps cannot drift: each stage's import closure must be covered by its deps.

A module a stage imports but dvc.yaml does not list is a change that re-runs nothing. The closure
is computed with `ast` (tests/support/depgraph.py); the tests at the bottom plant faults and
check that the checker reports them, so a checker that silently found nothing would fail.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.registry import STAGES
from tests.support.depgraph import (
    StageRoots,
    dep_paths,
    import_closure,
    missing_deps,
    stage_roots,
)


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def _roots() -> list[StageRoots]:
    return [
        StageRoots(name, tuple(stage_roots(spec.params_model, spec.run_function)))
        for name, spec in STAGES.items()
    ]


def _code_deps(stage: dict) -> set[str]:
    return {d for d in dep_paths(stage) if d.startswith("tasks/")}


def test_dvc_deps_cover_every_stage_import_closure() -> None:
    report = missing_deps(_dvc_stages(), _roots(), PROJECT_ROOT)
    assert not report, (
        "dvc.yaml deps miss files the stage imports (add the file or its folder):\n"
        + ("\n".join(f"  {stage}: {', '.join(files)}" for stage, files in report.items()))
    )


def test_code_deps_exist() -> None:
    """A dep left behind by a move (tasks/models.py after the model library moved) fails here."""
    for name, stage in _dvc_stages().items():
        for dep in _code_deps(stage):
            assert (PROJECT_ROOT / dep).exists(), f"{name}: dvc.yaml dep {dep} does not exist"


def test_registry_code_matches_dvc_code_deps() -> None:
    """The registry's `code` (hashed into the MLflow run's DVC fingerprint) is dvc.yaml's view."""
    dvc = _dvc_stages()
    for name, spec in STAGES.items():
        assert set(spec.code) == _code_deps(dvc[name]), (
            f"{name}: tasks/registry.py code= and dvc.yaml's tasks/ deps differ: "
            f"only in registry {sorted(set(spec.code) - _code_deps(dvc[name]))}, "
            f"only in dvc.yaml {sorted(_code_deps(dvc[name]) - set(spec.code))}"
        )


# --- the checker itself: planted faults must be reported ---------------------------------------


def test_checker_reports_a_removed_dep() -> None:
    dvc = copy.deepcopy(_dvc_stages())
    roots = _roots()
    sample = next(r for r in roots if r.name == "sample")
    closure = import_closure(sample.modules, PROJECT_ROOT)
    assert "tasks/sample/stage.py" in closure and "tasks/base.py" in closure
    dvc["sample"]["deps"] = [d for d in dvc["sample"]["deps"] if d != "tasks/base.py"]
    assert "tasks/base.py" in missing_deps(dvc, [sample], PROJECT_ROOT).get("sample", [])


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture()
def toy_tree(tmp_path: Path) -> Path:
    """A tiny `tasks/` tree: a stage with lazy, relative and type-only imports and package data."""
    _write(tmp_path, "tasks/__init__.py")
    _write(tmp_path, "tasks/base.py")
    _write(tmp_path, "tasks/lib/__init__.py", "from tasks.lib import core\n")
    _write(tmp_path, "tasks/lib/core.py")
    _write(tmp_path, "tasks/lib/configs/arch.json", "{}")
    _write(tmp_path, "tasks/typing_only.py")
    _write(tmp_path, "tasks/other/__init__.py")
    _write(tmp_path, "tasks/other/helper.py")
    _write(tmp_path, "tasks/toy/__init__.py")
    _write(tmp_path, "tasks/toy/params.py", "import tasks.base\n")
    _write(
        tmp_path,
        "tasks/toy/stage.py",
        """\
        from typing import TYPE_CHECKING

        from . import util
        from .params import *

        if TYPE_CHECKING:
            from tasks import typing_only

        def run(params):
            from tasks.other.helper import thing  # a lazy import inside a function
            return {}
        """,
    )
    _write(tmp_path, "tasks/toy/util.py", "from ..lib.core import x\n")
    return tmp_path


def test_closure_follows_lazy_relative_imports_packages_and_data(toy_tree: Path) -> None:
    closure = import_closure(["tasks.toy.params", "tasks.toy.stage"], toy_tree)
    assert closure == {
        "tasks/__init__.py",
        "tasks/base.py",
        "tasks/toy/__init__.py",
        "tasks/toy/params.py",
        "tasks/toy/stage.py",
        "tasks/toy/util.py",
        "tasks/lib/__init__.py",
        "tasks/lib/core.py",
        "tasks/lib/configs/arch.json",
        "tasks/other/__init__.py",
        "tasks/other/helper.py",
    }, "tasks/typing_only.py is imported only for type checking and must not count"


def test_checker_reports_a_planted_import(toy_tree: Path) -> None:
    toy = StageRoots("toy", ("tasks.toy.params", "tasks.toy.stage"))
    dvc = {"toy": {"deps": ["tasks/__init__.py", "tasks/base.py", "tasks/toy", "tasks/lib"]}}
    assert missing_deps(dvc, [toy], toy_tree) == {
        "toy": ["tasks/other/__init__.py", "tasks/other/helper.py"]
    }
    dvc["toy"]["deps"].append("tasks/other")
    assert missing_deps(dvc, [toy], toy_tree) == {}
    _write(toy_tree, "tasks/lib/core.py", "def f():\n    import tasks.typing_only\n")
    assert missing_deps(dvc, [toy], toy_tree) == {"toy": ["tasks/typing_only.py"]}
