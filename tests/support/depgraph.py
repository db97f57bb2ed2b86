"""A stage's import closure inside the repository, read with `ast`, and the check of dvc.yaml's deps.

DVC re-runs a stage only when one of its listed deps changes, so a module the stage imports but
dvc.yaml does not list is a change that silently re-runs nothing. The closure starts from the
modules the registry names for a stage (its run function and its params model), follows every
`import tasks.x` / `from tasks.x import y` / relative import (those inside functions too, since
stages import heavy modules lazily), and counts each imported module's package `__init__.py`
files and package data (the non-Python files of a package folder, e.g. architecture configs),
because those run or are read when the stage runs. Imports under `if TYPE_CHECKING:` are skipped:
they never execute. Only what lies under the top package (`tasks/`) is followed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOP_PACKAGE = "tasks"


def module_file(module: str, root: Path) -> Path | None:
    """The file that defines `module` (a .py file or a package's __init__.py), if it is ours."""
    parts = module.split(".")
    if parts[0] != TOP_PACKAGE:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks (their `else` still runs)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, root: Path) -> set[str]:
    """Module names a file may import at run time (a `from m import x` counts `m` and `m.x`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _with_parents(module: str) -> list[str]:
    """`a.b.c` -> [a, a.b, a.b.c]: importing a module runs every parent package's __init__."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _package_data(package_dir: Path) -> set[Path]:
    """Non-Python files of a package folder and of its sub-folders that are not packages."""
    out: set[Path] = set()
    for child in package_dir.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_file() and child.suffix not in {".py", ".pyc"}:
            out.add(child)
        elif child.is_dir() and not (child / "__init__.py").exists():
            out.update(f for f in child.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    return out


def import_closure(modules: Iterable[str], root: Path) -> set[str]:
    """Files (POSIX paths relative to `root`) that importing `modules` executes or reads."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [m for name in modules for m in _with_parents(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            continue
        files.add(path)
        if path.name == "__init__.py":
            files.update(_package_data(path.parent))
        for imported in imported_modules(path, root):
            todo.extend(m for m in _with_parents(imported) if m not in seen)
    return {f.relative_to(root).as_posix() for f in files}


def stage_roots(params_model: str, run_function: str) -> list[str]:
    """The modules a registry entry names ("module:attr" strings)."""
    return [params_model.partition(":")[0], run_function.partition(":")[0]]


def covered(path: str, deps: Iterable[str]) -> bool:
    """True when `path` is a listed dep or lies in a listed folder."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def dep_paths(stage: Mapping[str, Any]) -> list[str]:
    """A dvc.yaml stage's deps as plain paths."""
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []]


@dataclass(frozen=True)
class StageRoots:
    """What the checker needs from a registry entry: its name and the modules it names."""

    name: str
    modules: tuple[str, ...]


def missing_deps(
    dvc_stages: Mapping[str, Mapping[str, Any]], stages: Iterable[StageRoots], root: Path
) -> dict[str, list[str]]:
    """Per stage, the files its import closure holds that dvc.yaml's deps do not cover."""
    report: dict[str, list[str]] = {}
    for stage in stages:
        deps = dep_paths(dvc_stages.get(stage.name) or {})
        missing = sorted(f for f in import_closure(stage.modules, root) if not covered(f, deps))
        if missing:
            report[stage.name] = missing
    return report
