"""Contract tests: params files, models, the registry and dvc.yaml stay in step."""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tasks import PROJECT_ROOT
from tasks.base import ParamsSection
from tasks.imaging.resize import ResizeParams
from tasks.registry import STAGES


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def _section_type(annotation: Any) -> type[ParamsSection] | None:
    """The ParamsSection a field holds (`Section` or `Section | None`), None for plain values."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, ParamsSection) else None
    found = [t for t in map(_section_type, typing.get_args(annotation)) if t is not None]
    return found[0] if len(found) == 1 else None


def _models(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The stage's params model and every section below it, each with its dotted path."""
    yield path, model
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            yield from _models(section, f"{path}.{name}")


def _yaml_gaps(model: type[BaseModel], written: Any, path: str) -> list[str]:
    """Fields missing from (or unknown to) the YAML at every level of nesting."""
    if not isinstance(written, dict):
        return [f"{path}: a mapping of the section's fields, got {written!r}"]
    gaps = [f"{path}.{k}: missing" for k in model.model_fields if k not in written]
    gaps += [f"{path}.{k}: not a field" for k in written if k not in model.model_fields]
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None and name in written and written[name] is not None:
            gaps += _yaml_gaps(section, written[name], f"{path}.{name}")
    return gaps


@pytest.mark.parametrize("name", list(STAGES))
def test_params_yaml_validates_against_model(name):
    spec = STAGES[name]
    spec.model().from_yaml(spec.params_file)
    written = yaml.safe_load(spec.params_file.read_text())
    gaps = _yaml_gaps(spec.model(), written, name)
    assert not gaps, f"the YAML must hold every field's value at every level: {gaps}"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_field_has_type_default_and_comment(name):
    for path, model in _models(STAGES[name].model(), name):
        for field_name, field in model.model_fields.items():
            assert field.annotation is not None, f"{path}.{field_name}"
            assert not field.is_required(), f"{path}.{field_name} has no default"
        source = inspect.getsource(model)
        lines = source.splitlines()
        commented = set()
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id in model.model_fields
            ):
                last = lines[node.end_lineno - 1]
                assert "#" in last, f"{path}.{node.target.id}: needs a one-line comment"
                commented.add(node.target.id)
        # Fields inherited from a base class are checked with that class's source.
        own = {n for n in model.model_fields if n in vars(model).get("__annotations__", {})}
        assert own <= commented, f"{path}: fields not found in the source: {own - commented}"


def test_contract_helpers_recurse_into_sections():
    """The two tests above can fail: a nested field without its YAML value, a section without
    its comment, are both caught."""
    from tasks.crawl.params import CrawlParams

    assert ("crawl.resize", ResizeParams) in list(_models(CrawlParams, "crawl"))
    written = yaml.safe_load((PROJECT_ROOT / "params/crawl.yaml").read_text())
    del written["resize"]["image_size"]
    written["http"]["bogus"] = 1
    assert _yaml_gaps(CrawlParams, written, "crawl") == [
        "crawl.http.bogus: not a field",
        "crawl.resize.image_size: missing",
    ]


# Sections of another stage's params file that a stage reads itself; DVC tracks exactly those keys
# (`- params/crawl.yaml:` then `- resize`), so a change elsewhere in that file re-runs nothing.
SECTION_PARAMS: dict[str, list[dict[str, list[str]]]] = {
    "decontaminate": [{"params/crawl.yaml": ["resize"]}],  # eval images hashed as the crawl resized
    "curate": [
        {"params/crawl.yaml": ["resize"]},  # eval images hashed as the crawl resized
        {"params/decontaminate.yaml": ["match"]},  # hash matching of the teacher's protection
    ],
}


def test_dvc_stages_match_registry():
    dvc = _dvc_stages()
    assert list(dvc) == list(STAGES), "dvc.yaml must list the registry's stages in pipeline order"
    for name, spec in STAGES.items():
        stage = dvc[name]
        assert stage["cmd"] == f"clipmill run {name}"
        assert stage["params"] == [{f"params/{name}.yaml": None}, *SECTION_PARAMS.get(name, [])], (
            "whole params file, block form (plus the sections it reads from another stage's file)"
        )
        for extra in SECTION_PARAMS.get(name, []):
            for file, keys in extra.items():
                owner = next(s for s in STAGES.values() if f"params/{s.name}.yaml" == file)
                for key in keys:
                    assert key in owner.model().model_fields, f"{name}: {file} has no {key!r}"
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


SHARED_FIELDS_LIMIT = 3  # field names two sections of different stages may not have in common


def _shared_section_fields(models: dict[str, type[BaseModel]]) -> list[str]:
    """Pairs of sections (ParamsSection, at any depth) of different stages' params models that
    share SHARED_FIELDS_LIMIT or more field names: one concern declared twice. Stages that run
    with the very same params model (teacher and train) are one declaration, compared once."""
    by_model: dict[type[BaseModel], str] = {}
    for stage, model in models.items():
        by_model.setdefault(model, stage)
    sections = [
        (stage, path, section)
        for model, stage in by_model.items()
        for path, section in _models(model, stage)
        if issubclass(section, ParamsSection)
    ]
    found = []
    for i, (stage_a, path_a, a) in enumerate(sections):
        for stage_b, path_b, b in sections[i + 1 :]:
            common = sorted(set(a.model_fields) & set(b.model_fields))
            if stage_a != stage_b and len(common) >= SHARED_FIELDS_LIMIT:
                found.append(f"{path_a} and {path_b} both declare {common}")
    return found


def test_no_section_is_declared_by_two_stages():
    """A stage reads another stage's section (tasks.paramsfiles.read_section, a dvc.yaml params
    dependency on that key) instead of re-declaring its fields."""
    shared = _shared_section_fields({name: spec.model() for name, spec in STAGES.items()})
    assert not shared, f"read the owner's section instead of re-declaring it: {shared}"


def test_shared_section_check_catches_a_redeclared_section():
    """The check above can fail: curate's decontaminate section re-declaring the hash thresholds
    of the decontaminate stage's `match` (as it once did) is caught; one common name is not."""
    from tasks.base import StageParams
    from tasks.decontam.params import HashMatchParams

    class Gate(ParamsSection):
        eval_view: str = "crawl"  # planted
        hash_max_distance: int = 4  # planted
        dhash_max_distance: int = 8  # planted
        crops: list[float] = [0.82, 0.9]  # planted
        hash_embed_min: float | None = 0.85  # planted

    class Owner(StageParams):
        match: HashMatchParams = HashMatchParams()  # planted

    class Reader(StageParams):
        decontaminate: Gate = Gate()  # planted

    assert _shared_section_fields({"owner": Owner, "reader": Reader}) == [
        "owner.match and reader.decontaminate both declare "
        "['crops', 'dhash_max_distance', 'eval_view', 'hash_max_distance']"
    ]

    class OneName(ParamsSection):
        eval_view: str = "raw"  # planted

    class Other(StageParams):
        decontaminate: OneName = OneName()  # planted

    assert _shared_section_fields({"owner": Owner, "other": Other}) == []
    assert _shared_section_fields({"teacher": Owner, "train": Owner}) == []
