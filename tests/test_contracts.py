"""Contract tests: params files, models, the registry and dvc.yaml stay in step."""

from __future__ import annotations

import ast
import inspect

import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.registry import STAGES


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_params_yaml_validates_against_model(name):
    spec = STAGES[name]
    params = spec.model().from_yaml(spec.params_file)
    written = yaml.safe_load(spec.params_file.read_text())
    assert set(written) == set(params.model_dump()), "the YAML must hold every field's value"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_field_has_type_default_and_comment(name):
    model = STAGES[name].model()
    for field_name, field in model.model_fields.items():
        assert field.annotation is not None, field_name
        assert not field.is_required(), f"{name}.{field_name} has no default"
    source = inspect.getsource(model)
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id in model.model_fields
        ):
            last = lines[node.end_lineno - 1]
            assert "#" in last, f"{name}.{node.target.id}: needs a one-line comment"


def test_dvc_stages_match_registry():
    dvc = _dvc_stages()
    assert list(dvc) == list(STAGES), "dvc.yaml must list the registry's stages in pipeline order"
    for name, spec in STAGES.items():
        stage = dvc[name]
        assert stage["cmd"] == f"clipmill run {name}"
        assert stage["params"] == [{f"params/{name}.yaml": None}], "whole params file, block form"
        for code in spec.code:
            assert code in stage["deps"], f"{name}: code dep {code} missing in dvc.yaml"
        assert {"metrics/" + name + ".json": {"cache": False}} in stage["metrics"]
        assert stage.get("outs"), f"{name}: no outs"


def test_upstream_stages_come_first():
    order = list(STAGES)
    for name, spec in STAGES.items():
        for up in spec.upstream:
            assert order.index(up) < order.index(name), f"{name} runs before its upstream {up}"


def test_stage_packages_import_neither_prefect_nor_dvc():
    for path in (PROJECT_ROOT / "tasks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for mod in names:
                assert mod.split(".")[0] not in {"prefect", "dvc"}, f"{path} imports {mod}"
