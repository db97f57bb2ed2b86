"""The layers of docs/ARCHITECTURE.md hold: what may import what, read with `ast`.

- library (tasks/clip, tasks/imaging, tasks/io, tasks/settings.py, tasks/base.py, ...) never
  imports a stage package nor the runner/doors;
- a stage package (tasks/<stage>/) never imports another stage package nor the runner/doors;
- doors (tasks/cli.py, flows/) reach stages only through the runner and the registry.

Every allowed exception is listed in ALLOWED with its reason; an entry no longer needed fails too,
so the list shrinks as code moves into the library.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tasks.registry import STAGES
from tests.support.depgraph import imported_modules

RUNNER = {"tasks.runner", "tasks.registry", "tasks.cli", "tasks.__main__"}
DOORS = {"tasks.cli", "tasks.__main__"}

# (importing module or package, imported module or package) -> why it is allowed.
ALLOWED: dict[tuple[str, str], str] = {}


def _stage_packages() -> set[str]:
    return {".".join(spec.run_function.split(":")[0].split(".")[:2]) for spec in STAGES.values()}


def _module(path: Path) -> str:
    rel = path.relative_to(PROJECT_ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _owner(module: str, stages: set[str]) -> str:
    """The layer unit a module belongs to: its stage package, a runner/door module, or library."""
    for stage in stages:
        if _within(module, stage):
            return stage
    if module in RUNNER or _within(module, "flows"):
        return "door" if module in DOORS or _within(module, "flows") else "runner"
    return "library"


def _is_module(name: str) -> bool:
    base = PROJECT_ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _edges() -> list[tuple[str, str]]:
    """(importer, imported) for every import of a repository module, in tasks/ and flows/."""
    edges = []
    for folder in ("tasks", "flows"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            importer = _module(path)
            for imported in sorted(imported_modules(path, PROJECT_ROOT)):
                # `from m import name` lists `m.name` too; keep only what is a module here.
                if imported != "tasks" and _is_module(imported):
                    edges.append((importer, imported))
    return edges


def _allowed(importer: str, imported: str) -> bool:
    return any(_within(importer, a) and _within(imported, b) for a, b in ALLOWED)


def _violation(importer: str, imported: str, stages: set[str]) -> str | None:
    src, dst = _owner(importer, stages), _owner(imported, stages)
    if src == "library" and dst != "library":
        return f"library module {importer} imports {imported} ({dst})"
    if src in stages and dst in RUNNER | {"runner", "door"}:
        return f"stage module {importer} imports the runner/doors: {imported}"
    if src in stages and dst in stages and dst != src:
        return f"stage {src} imports another stage's module {imported}"
    if src == "door" and dst in stages:
        return f"door {importer} imports stage code {imported} (doors go through the runner)"
    return None


def test_layers_import_only_downwards() -> None:
    stages = _stage_packages()
    found = [
        msg
        for importer, imported in _edges()
        if not _allowed(importer, imported)
        and (msg := _violation(importer, imported, stages)) is not None
    ]
    assert not found, "layer violations (see docs/ARCHITECTURE.md):\n" + "\n".join(
        sorted(set(found))
    )


def test_every_allowed_exception_is_still_needed() -> None:
    stages = _stage_packages()
    edges = _edges()
    for (a, b), reason in ALLOWED.items():
        used = any(_within(i, a) and _within(m, b) and _violation(i, m, stages) for i, m in edges)
        assert used, f"ALLOWED[{a!r}, {b!r}] ({reason}) is no longer needed: remove it"


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("tasks.imaging.resize", "tasks.crawl.params", "library module"),
        ("tasks.curate.steps.decontam", "tasks.crawl.resizer", "another stage's"),
        ("tasks.crawl.stage", "tasks.registry", "the runner/doors"),
        ("flows.pipeline", "tasks.train.stage", "doors go through the runner"),
        ("tasks.train.worker", "tasks.clip.load", None),
        ("tasks.curate.stage", "tasks.curate.steps.base", None),
        ("flows.pipeline", "tasks.registry", None),
    ],
)
def test_planted_imports_are_judged(importer: str, imported: str, expected: str | None) -> None:
    """The rule itself, on planted edges: a checker that judged nothing would fail here."""
    verdict = _violation(importer, imported, _stage_packages())
    if expected is None:
        assert verdict is None, verdict
    else:
        assert verdict is not None and expected in verdict, verdict
